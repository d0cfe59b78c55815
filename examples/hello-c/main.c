/*
 * hello-c: a Strata "exec" function in plain C (libc only).
 *
 * It speaks protocol v1 (docs/protocol.md) on fd 3: sends {"t":"ready"}, then
 * answers every invoke with 200, content-type text/plain and the body
 * "hello from C: " followed by the request body. It exits 0 on shutdown or EOF.
 *
 * Build: cc -O2 -Wall -Wextra -o build/hello main.c
 *
 * It only looks at two header fields: "t" (the frame type) and "id" (copied
 * verbatim, still JSON-escaped, into the response), found by simple scanning.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTRL_FD 3
#define GREETING "hello from C: "

/* Read exactly n bytes. Returns 1 on success, 0 on EOF before the first byte, -1 otherwise. */
static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r > 0) {
            got += (size_t)r;
        } else if (r == 0) {
            return got == 0 ? 0 : -1;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 1;
}

static int write_full(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w > 0) {
            put += (size_t)w;
        } else if (w < 0 && errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

static uint32_t get_u32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* One frame: u32 BE header length, header JSON, u32 BE body length, body. The
 * body parts (a, b) are concatenated; everything goes out in a single write. */
static int send_frame(const char *hdr, size_t hl, const char *a, size_t al, const char *b, size_t bl) {
    size_t total = 8 + hl + al + bl;
    unsigned char *out = malloc(total);
    if (!out) return -1;
    put_u32(out, (uint32_t)hl);
    memcpy(out + 4, hdr, hl);
    put_u32(out + 4 + hl, (uint32_t)(al + bl));
    if (al) memcpy(out + 8 + hl, a, al);
    if (bl) memcpy(out + 8 + hl + al, b, bl);
    int rc = write_full(CTRL_FD, out, total);
    free(out);
    return rc;
}

/*
 * Find the string value of a top-level key in a JSON object: the bytes between
 * its quotes, still escaped. This is enough because the platform's keys are fixed
 * ("t", "id", ...) and a quoted string followed by ':' can only be a key.
 * Returns 1 and sets *val and *len if found.
 */
static int find_string_field(const char *json, size_t n, const char *key, const char **val, size_t *len) {
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 2 <= n; i++) {
        if (json[i] != '"' || memcmp(json + i + 1, key, kl) != 0 || json[i + 1 + kl] != '"') continue;
        size_t j = i + kl + 2;
        while (j < n && (json[j] == ' ' || json[j] == '\t' || json[j] == '\n' || json[j] == '\r')) j++;
        if (j >= n || json[j] != ':') continue;
        j++;
        while (j < n && (json[j] == ' ' || json[j] == '\t' || json[j] == '\n' || json[j] == '\r')) j++;
        if (j >= n || json[j] != '"') return 0; /* not a string value */
        size_t start = ++j;
        while (j < n && json[j] != '"') j += (json[j] == '\\') ? 2 : 1;
        if (j >= n) return 0;
        *val = json + start;
        *len = j - start;
        return 1;
    }
    return 0;
}

static int field_is(const char *json, size_t n, const char *key, const char *want) {
    const char *v;
    size_t l;
    return find_string_field(json, n, key, &v, &l) && l == strlen(want) && memcmp(v, want, l) == 0;
}

int main(void) {
    static const char ready[] = "{\"t\":\"ready\"}";
    if (send_frame(ready, sizeof ready - 1, NULL, 0, NULL, 0) != 0) return 1;

    char *hdr = NULL, *body = NULL, *resp = NULL;
    size_t hdr_cap = 0, body_cap = 0, resp_cap = 0;
    for (;;) {
        unsigned char len[4];
        int r = read_full(CTRL_FD, len, 4);
        if (r == 0) return 0; /* EOF: the platform is done with us */
        if (r < 0) return 1;
        uint32_t hl = get_u32(len);
        if ((size_t)hl + 1 > hdr_cap && !(hdr = realloc(hdr, hdr_cap = (size_t)hl + 1))) return 1;
        if (read_full(CTRL_FD, hdr, hl) != 1 || read_full(CTRL_FD, len, 4) != 1) return 1;
        hdr[hl] = '\0';
        uint32_t bl = get_u32(len);
        if (bl > body_cap && !(body = realloc(body, body_cap = bl))) return 1;
        if (bl && read_full(CTRL_FD, body, bl) != 1) return 1;

        if (field_is(hdr, hl, "t", "shutdown")) return 0;
        if (!field_is(hdr, hl, "t", "invoke")) continue; /* ignore frame types we don't know */

        const char *id;
        size_t idl;
        if (!find_string_field(hdr, hl, "id", &id, &idl)) {
            fprintf(stderr, "hello-c: invoke without an id\n");
            continue;
        }
        static const char pre[] = "{\"t\":\"response\",\"id\":\"";
        static const char post[] = "\",\"status\":200,\"headers\":[[\"content-type\",\"text/plain\"]]}";
        size_t rl = sizeof pre - 1 + idl + sizeof post - 1;
        if (rl > resp_cap && !(resp = realloc(resp, resp_cap = rl))) return 1;
        memcpy(resp, pre, sizeof pre - 1);
        memcpy(resp + sizeof pre - 1, id, idl);
        memcpy(resp + sizeof pre - 1 + idl, post, sizeof post - 1);
        if (send_frame(resp, rl, GREETING, sizeof GREETING - 1, body, bl) != 0) return 0;
    }
}
