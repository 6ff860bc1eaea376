/* udpecho PORT: answer every UDP datagram with the same bytes, back to its sender.
 * udpecho HOST PORT SIZE [SECONDS]: the client. Send SIZE bytes (a fixed pattern) from a connect()ed
 * socket, once a second, until the same bytes come back ("echo SIZE bytes ok", status 0), an error
 * arrives ("udpecho: recv: Connection refused" for an ICMP port unreachable, status 1), or SECONDS
 * (default 10) pass (status 3).
 * busybox-static has no UDP server and its nc no UDP; the user-stack tests need both inside the guest
 * (a UDP host forward, datagrams the guest's kernel fragments, ICMP errors). Built static by
 * tools/build_guest.py. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static char buf[65536], sent[65536];

static int client(const char *host, int port, int size, int seconds) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (size < 0 || size > 65507 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "udpecho: bad HOST or SIZE\n");
        return 2;
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udpecho: connect");
        return 1;
    }
    for (int i = 0; i < size; i++)
        sent[i] = (char)(i * 7 + i / 251);
    time_t end = time(NULL) + seconds;
    while (time(NULL) < end) {
        if (send(fd, sent, (size_t)size, 0) < 0) {
            perror("udpecho: send");
            return 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        while (poll(&p, 1, 1000) > 0) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0) {
                perror("udpecho: recv");
                return 1;
            }
            if (n == size && memcmp(buf, sent, (size_t)size) == 0) {
                printf("echo %d bytes ok\n", size);
                return 0;
            }
        }
    }
    fprintf(stderr, "udpecho: no echo within %d s\n", seconds);
    return 3;
}

int main(int argc, char **argv) {
    if (argc == 4 || argc == 5)
        return client(argv[1], atoi(argv[2]), atoi(argv[3]), argc == 5 ? atoi(argv[4]) : 10);
    if (argc != 2) {
        fprintf(stderr, "usage: udpecho PORT | udpecho HOST PORT SIZE [SECONDS]\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udpecho");
        return 1;
    }
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n >= 0)
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
    }
}
