/* The fast path's common request body, parsed in one pass: JSON pixel lists straight into float32.
 *
 * service.mcjson loads this (libmcjson.so) with ctypes; service.decode.decode_json_request calls it first and
 * uses its answer when it has one. It accepts only a strict subset of JSON, the form every client sends:
 *
 *   { "images": [ image, ... ], "n_samples": int, "seed": int }   (keys in any order; only the allowed ones)
 *
 * where an image is a list of 784 pixels or 28 lists of 28, a pixel is a JSON integer 0..255 written in digits
 * ("0" or no leading zero), and an integer is at most 18 digits with an optional minus ("-0" excluded). Whitespace
 * as JSON allows it. Anything else (a float, an exponent, a string, an escape in a key, a duplicate or unknown key,
 * a wrong shape, a value out of range, more images than the caller's room, trailing bytes) returns 0: not this
 * parser's to answer, and the caller parses the body the general way, which then accepts it (floats) or hands it
 * to the application that names the field. For what it accepts, the pixels are exactly what the general decoder
 * returns (an integer 0..255 is exact in float32), so a request's answer never depends on which parser read it.
 *
 * Short (a 1-image body, about 3 KB, takes a few microseconds): the caller keeps the GIL.
 */
#include <stdint.h>
#include <string.h>

enum { SIDE = 28, PIXELS = SIDE * SIDE, PIXEL_MAX = 255, MAX_DIGITS = 18 };
enum { KEY_IMAGES = 1, KEY_N_SAMPLES = 2, KEY_SEED = 4 };

static inline int is_digit(char c) { return (unsigned)((unsigned char)c - '0') <= 9; }

static inline const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* A pixel at p: "0" or [1-9][0-9]{0,2} of value <= 255; the byte after it, or NULL. */
static inline const char *pixel(const char *p, const char *end, float *out) {
    if (p >= end || !is_digit(*p)) return NULL;
    unsigned v = (unsigned)(*p++ - '0');
    if (v != 0) {
        for (int k = 0; k < 2 && p < end && is_digit(*p); k++) v = v * 10 + (unsigned)(*p++ - '0');
    }
    if (p < end && is_digit(*p)) return NULL; /* a leading zero, or four digits */
    if (v > PIXEL_MAX) return NULL;
    *out = (float)v;
    return p;
}

/* "[" n pixels separated by commas "]" at p; the byte after it, or NULL. */
static const char *row(const char *p, const char *end, float *out, int n) {
    if (p >= end || *p != '[') return NULL;
    p = ws(p + 1, end);
    for (int i = 0; i < n; i++) {
        if (i) {
            p = ws(p, end);
            if (p >= end || *p != ',') return NULL;
            p = ws(p + 1, end);
        }
        p = pixel(p, end, out + i);
        if (p == NULL) return NULL;
    }
    p = ws(p, end);
    return p < end && *p == ']' ? p + 1 : NULL;
}

/* One image at p: a flat list of 784 pixels or 28 rows of 28. */
static const char *image(const char *p, const char *end, float *out) {
    if (p >= end || *p != '[') return NULL;
    const char *q = ws(p + 1, end);
    if (q < end && *q != '[') return row(p, end, out, PIXELS);
    p = q;
    for (int r = 0; r < SIDE; r++) {
        if (r) {
            p = ws(p, end);
            if (p >= end || *p != ',') return NULL;
            p = ws(p + 1, end);
        }
        p = row(p, end, out + r * SIDE, SIDE);
        if (p == NULL) return NULL;
    }
    p = ws(p, end);
    return p < end && *p == ']' ? p + 1 : NULL;
}

/* A JSON integer of at most MAX_DIGITS digits (no fraction, no exponent, not "-0"). */
static const char *integer(const char *p, const char *end, int64_t *out) {
    int negative = p < end && *p == '-';
    p += negative;
    if (p >= end || !is_digit(*p)) return NULL;
    if (*p == '0') {
        if (negative || (p + 1 < end && is_digit(p[1]))) return NULL;
        *out = 0;
        return p + 1;
    }
    int64_t v = 0;
    int digits = 0;
    while (p < end && is_digit(*p)) {
        if (++digits > MAX_DIGITS) return NULL;
        v = v * 10 + (*p++ - '0');
    }
    *out = negative ? -v : v;
    return p;
}

/* A key at p ("images", "n_samples" or "seed", nothing escaped): its bit, the byte after it in *next; 0 if none. */
static int key(const char *p, const char *end, const char **next) {
    if (p >= end || *p != '"') return 0;
    const char *s = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\' || (unsigned char)*p < 0x20) return 0;
        p++;
    }
    if (p >= end) return 0;
    size_t n = (size_t)(p - s);
    *next = p + 1;
    if (n == 6 && memcmp(s, "images", 6) == 0) return KEY_IMAGES;
    if (n == 9 && memcmp(s, "n_samples", 9) == 0) return KEY_N_SAMPLES;
    if (n == 4 && memcmp(s, "seed", 4) == 0) return KEY_SEED;
    return 0;
}

/* After a list's or an object's member: 1 and `*at` past a comma (and its spaces) when another member follows, 0
 * and `*at` on `close` when the list or object ends there, -1 for anything else. */
static inline int next_member(const char **at, const char *end, char close) {
    const char *p = ws(*at, end);
    if (p < end && *p == ',') {
        *at = ws(p + 1, end);
        return 1;
    }
    *at = p;
    return p < end && *p == close ? 0 : -1;
}

/* Parse body[0:len]: the number of images written to out (room for `room` images of 784 float32), with
 * ints[0] = n_samples and ints[1] = seed and *present the bits of the keys seen; 0 when the body is not of the
 * accepted form (or has more than `room` images). `allowed`: the bits of the keys the endpoint takes. */
int64_t mc_json_pixels(const char *body, int64_t len, int64_t allowed, float *out, int64_t room, int64_t *ints,
                       int64_t *present) {
    const char *p = body, *end = body + len;
    int seen = 0;
    int64_t images = 0;
    p = ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = ws(p + 1, end);
    for (;;) {
        const char *after;
        int bit = key(p, end, &after);
        if (bit == 0 || (bit & seen) || !(bit & allowed)) return 0;
        seen |= bit;
        p = ws(after, end);
        if (p >= end || *p != ':') return 0;
        p = ws(p + 1, end);
        if (bit == KEY_IMAGES) {
            if (p >= end || *p != '[') return 0;
            p = ws(p + 1, end);
            for (;;) {
                if (images >= room) return 0;
                p = image(p, end, out + images * PIXELS);
                if (p == NULL) return 0;
                images++;
                const int more = next_member(&p, end, ']');
                if (more < 0) return 0;
                if (!more) break;
            }
            p++;
        } else {
            p = integer(p, end, &ints[bit == KEY_N_SAMPLES ? 0 : 1]);
            if (p == NULL) return 0;
        }
        const int more = next_member(&p, end, '}');
        if (more < 0) return 0;
        if (!more) break;
    }
    if (ws(p + 1, end) != end || !(seen & KEY_IMAGES)) return 0;
    *present = seen;
    return images;
}
