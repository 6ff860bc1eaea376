from vmlan.cli import main

raise SystemExit(main())
