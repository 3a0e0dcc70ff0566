/*
 * test_mask.c - src/io/mask.c: decoding of every PNG colour type and bit
 * depth and of JPEG, colour and 16-bit rules, hostile and truncated bytes,
 * class conversion and its errors, nearest resize, encode/decode round
 * trips, overlap counts, and no leaks when allocations fail.
 *
 *   make unittest && test/bin/test_mask
 */
#include "io/mask.h"
#include "io/image.h"
#include "mt_test.h"
#include "codec_writers.h"
#include "count_alloc.h"

#include <string.h>

/* --------------------------------------------------------- helpers -- */

#define W 7
#define H 5

/* Decode buf as a mask; on success check size and compare with want (w*h). */
static void
check_decode(const char *what, const uint8_t *buf, size_t len, const uint8_t *want,
			 int lossy)
{
	mt_mask		m;
	mt_err		err;
	int			rc;

	CHECK(buf != NULL, "%s: test encoder failed", what);
	if (buf == NULL)
		return;
	rc = mt_mask_decode(buf, len, 0, &m, &err);
	CHECK(rc == MT_OK, "%s: decode failed: %s (%s)", what, err.msg, err.detail);
	if (rc != MT_OK)
		return;
	CHECK(m.w == W && m.h == H, "%s: size %dx%d", what, m.w, m.h);
	CHECK(m.lossy == lossy, "%s: lossy %d", what, m.lossy);
	if (want != NULL && m.w == W && m.h == H)
		CHECK(memcmp(m.data, want, W * H) == 0, "%s: values differ", what);
	mt_mask_free(&m);
}

/* Decode must fail with code; the message must contain needle (if given). */
static void
check_decode_fails(const char *what, const uint8_t *buf, size_t len, int code,
				   const char *needle)
{
	mt_mask		m;
	mt_err		err;
	int			rc;

	memset(&err, 0, sizeof(err));
	rc = mt_mask_decode(buf, len, 0, &m, &err);
	CHECK(rc == code, "%s: rc %d, want %d (%s)", what, rc, code, err.msg);
	CHECK(m.data == NULL && m.w == 0, "%s: output left behind", what);
	if (needle != NULL)
		CHECK(strstr(err.msg, needle) != NULL, "%s: message \"%s\" lacks \"%s\"",
			  what, err.msg, needle);
}

/* Every PNG colour type and depth, read as one value per pixel. */
static void
test_png_types(void)
{
	uint16_t	s[W * H * 4];
	uint8_t		want[W * H];
	uint8_t    *buf;
	size_t		len;
	char		what[96];

	/* gray at every depth: values 0 .. 2^depth-1, expanded as libpng scales them */
	for (int depth = 1; depth <= 16; depth *= 2)
	{
		int			maxv = (1 << depth) - 1;

		for (int i = 0; i < W * H; i++)
		{
			s[i] = (uint16_t) ((i * 3) % (maxv + 1));
			/* 1/2/4-bit gray is scaled to 8 bits (v * 255 / maxv); 16-bit below 256 kept */
			want[i] = depth <= 8 ? (uint8_t) (s[i] * 255 / maxv) : (uint8_t) s[i];
		}
		if (depth == 16)
			for (int i = 0; i < W * H; i++)
				s[i] = want[i] = (uint8_t) (i % 4);	/* class indices stored wide */
		for (int il = 0; il < 2; il++)
		{
			buf = make_png(W, H, PNG_COLOR_TYPE_GRAY, depth, il, s, NULL, 0, NULL, 0, NULL, &len);
			snprintf(what, sizeof(what), "gray %d-bit%s", depth, il ? " interlaced" : "");
			check_decode(what, buf, len, want, 0);
			free(buf);
		}
	}

	/* 16-bit gray 0/65535 -> 0/255; 0/1000 has no one-byte meaning */
	for (int i = 0; i < W * H; i++)
	{
		s[i] = (i % 3) ? 65535 : 0;
		want[i] = (i % 3) ? 255 : 0;
	}
	buf = make_png(W, H, PNG_COLOR_TYPE_GRAY, 16, 0, s, NULL, 0, NULL, 0, NULL, &len);
	check_decode("gray 16-bit 0/65535", buf, len, want, 0);
	free(buf);
	for (int i = 0; i < W * H; i++)
		s[i] = (i == 9) ? 1000 : 0;
	buf = make_png(W, H, PNG_COLOR_TYPE_GRAY, 16, 0, s, NULL, 0, NULL, 0, NULL, &len);
	check_decode_fails("gray 16-bit 1000", buf, len, MT_ERR_INVALID, "16-bit mask value 1000 at (2, 1)");
	free(buf);

	/* gray + alpha, RGB, RGBA with equal channels, 8 and 16 bits */
	for (int depth = 8; depth <= 16; depth += 8)
	{
		static const int types[3] = {PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGBA};

		for (int t = 0; t < 3; t++)
		{
			int			nch = png_nch(types[t]);

			for (int i = 0; i < W * H; i++)
			{
				unsigned	v = (i % 2) ? 255 : 0;

				want[i] = (uint8_t) v;
				for (int c = 0; c < nch; c++)
					s[i * nch + c] = (uint16_t) (depth == 16 ? v * 257 : v);
				if (types[t] != PNG_COLOR_TYPE_RGB)
					s[i * nch + nch - 1] = (uint16_t) (depth == 16 ? 1234 : 77);	/* alpha: ignored */
			}
			buf = make_png(W, H, types[t], depth, 0, s, NULL, 0, NULL, 0, NULL, &len);
			snprintf(what, sizeof(what), "colour type %d, %d-bit", types[t], depth);
			check_decode(what, buf, len, want, 0);
			free(buf);

			if (types[t] == PNG_COLOR_TYPE_GRAY_ALPHA)
				continue;
			/* one pixel whose channels differ: a colour mask */
			s[(1 * W + 3) * nch + 1] ^= 1;
			buf = make_png(W, H, types[t], depth, 0, s, NULL, 0, NULL, 0, NULL, &len);
			snprintf(what, sizeof(what), "colour type %d, %d-bit, one colour pixel", types[t], depth);
			check_decode_fails(what, buf, len, MT_ERR_INVALID, "colour mask: channels differ at (3, 1)");
			free(buf);
		}
	}

	/* palettes: gray entries are read by value, coloured ones by index */
	{
		png_color	gray[2] = {{255, 255, 255}, {0, 0, 0}};	/* index 0 is white */
		png_color	voc[3] = {{0, 0, 0}, {128, 0, 0}, {0, 128, 0}};
		uint8_t		trns[1] = {0};

		for (int depth = 1; depth <= 8; depth *= 2)
		{
			for (int i = 0; i < W * H; i++)
			{
				s[i] = (uint16_t) (i % 2);
				want[i] = (i % 2) ? 0 : 255;
			}
			buf = make_png(W, H, PNG_COLOR_TYPE_PALETTE, depth, 0, s, gray, 2, NULL, 0, NULL, &len);
			snprintf(what, sizeof(what), "gray palette %d-bit", depth);
			check_decode(what, buf, len, want, 0);
			free(buf);
			/* with tRNS the expansion adds alpha, which is ignored */
			buf = make_png(W, H, PNG_COLOR_TYPE_PALETTE, depth, 0, s, gray, 2, trns, 1, NULL, &len);
			snprintf(what, sizeof(what), "gray palette %d-bit with tRNS", depth);
			check_decode(what, buf, len, want, 0);
			free(buf);
			if (depth == 1)
				continue;
			for (int i = 0; i < W * H; i++)
				s[i] = want[i] = (uint8_t) (i % 3);
			buf = make_png(W, H, PNG_COLOR_TYPE_PALETTE, depth, depth == 4, s, voc, 3, NULL, 0, NULL, &len);
			snprintf(what, sizeof(what), "colour palette %d-bit: indices", depth);
			check_decode(what, buf, len, want, 0);
			free(buf);
		}
	}
}

/* JPEG masks: luminance, flagged lossy; thresholding recovers a disc. */
static void
test_jpeg(void)
{
	enum
	{
	JW = 64, JH = 48};
	uint8_t		pix[JW * JH * 3];
	uint8_t		bin[JW * JH];
	uint8_t    *buf;
	size_t		len;

	for (int y = 0; y < JH; y++)
		for (int x = 0; x < JW; x++)
			bin[y * JW + x] = (x - 30) * (x - 30) + (y - 22) * (y - 22) < 200;	/* a disc: edges across blocks */
	for (int comp = 1; comp <= 3; comp += 2)
	{
		mt_mask		m;
		mt_err		err;
		int			rc,
					wrong = 0,
					off255 = 0;

		for (int i = 0; i < JW * JH; i++)
			for (int c = 0; c < comp; c++)
				pix[i * comp + c] = bin[i] ? 255 : 0;
		buf = make_jpeg(JW, JH, comp, comp == 1 ? JCS_GRAYSCALE : JCS_RGB, JCS_UNKNOWN,
						pix, 75, &len);
		rc = mt_mask_decode(buf, len, 0, &m, &err);
		CHECK(rc == MT_OK && m.w == JW && m.h == JH && m.lossy, "jpeg %d components: %s", comp, err.msg);
		if (rc == MT_OK)
		{
			mt_mask	c2 = m;

			for (int i = 0; i < JW * JH; i++)
				off255 += m.data[i] != 0 && m.data[i] != 255;
			CHECK(off255 > 0, "jpeg ringing makes values other than 0/255 (%d)", off255);
			CHECK(mt_mask_to_classes(&c2, 2, &err) == MT_ERR_INVALID, "strict conversion refuses ringing");
			mt_mask_free(&m);
			rc = mt_mask_decode(buf, len, 0, &m, &err);
			CHECK(mt_mask_to_classes_auto(&m, 2, &err) == MT_OK, "auto thresholds a JPEG: %s", err.msg);
			for (int i = 0; i < JW * JH; i++)
				wrong += m.data[i] != bin[i];
			CHECK(wrong == 0, "jpeg %d components thresholded: %d pixels wrong", comp, wrong);
			mt_mask_free(&m);
		}
		free(buf);
	}
	/* CMYK cannot be read as luminance */
	{
		uint8_t		cmyk[8 * 8 * 4];

		memset(cmyk, 0, sizeof(cmyk));
		buf = make_jpeg(8, 8, 4, JCS_CMYK, JCS_UNKNOWN, cmyk, 90, &len);
		check_decode_fails("cmyk jpeg", buf, len, MT_ERR_UNSUPPORTED, NULL);
		free(buf);
	}
}

/* Truncations, flipped bytes and garbage: an error, never a crash or a leak. */
static void
test_hostile(void)
{
	uint16_t	s[W * H];
	uint8_t    *png,
			   *jpg,
			   *bad;
	uint8_t		pix[32 * 32];
	size_t		plen,
				jlen;
	int			ok_fail = 1,
				n = 0;
	uint64_t	x = 12345;

	for (int i = 0; i < W * H; i++)
		s[i] = (i % 2) ? 255 : 0;
	for (int i = 0; i < 32 * 32; i++)
		pix[i] = (uint8_t) ((i * 7) & 255);
	png = make_png(W, H, PNG_COLOR_TYPE_GRAY, 8, 0, s, NULL, 0, NULL, 0, NULL, &plen);
	jpg = make_jpeg(32, 32, 1, JCS_GRAYSCALE, JCS_UNKNOWN, pix, 90, &jlen);
	mt_set_allocator(count_malloc, count_free);
	for (size_t cut = 0; cut < plen; cut++)
	{
		mt_mask		m;
		mt_err		err;
		int			rc = mt_mask_decode(png, cut, 0, &m, &err);

		/* cutting only IEND may still decode: what follows IDAT is not read */
		if (rc == MT_OK)
			mt_mask_free(&m);
		else
			ok_fail &= m.data == NULL && err.msg[0] != '\0';
		n++;
	}
	for (size_t cut = 0; cut + 2 < jlen; cut++)
	{
		mt_mask		m;
		mt_err		err;

		if (mt_mask_decode(jpg, cut, 0, &m, &err) == MT_OK)
		{
			ok_fail = 0;
			mt_mask_free(&m);
		}
		n++;
	}
	CHECK(ok_fail, "truncated masks fail cleanly (%d tries)", n);
	bad = malloc(plen > jlen ? plen : jlen);
	for (int t = 0; t < 2000; t++)
	{
		const uint8_t *src = (t & 1) ? jpg : png;
		size_t		len = (t & 1) ? jlen : plen;
		mt_mask		m;
		mt_err		err;

		memcpy(bad, src, len);
		for (int k = 0; k < 3; k++)
		{
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			bad[(x >> 33) % len] ^= (uint8_t) (x >> 17);
		}
		if (mt_mask_decode(bad, len, 0, &m, &err) == MT_OK)
			mt_mask_free(&m);
	}
	check_decode_fails("empty", NULL, 0, MT_ERR_CORRUPT, "empty");
	check_decode_fails("text", (const uint8_t *) "hello, world", 12, MT_ERR_CORRUPT, "unrecognised");
	CHECK(live_allocs == 0, "no leaks after hostile inputs (%ld blocks)", live_allocs);

	/* every allocation failing in turn: an error and nothing leaked */
	{
		int			clean = 1;

		for (long k = 0; k < 40; k++)
		{
			mt_mask		m;
			mt_err		err;
			uint8_t    *enc;
			size_t		elen;
			int			rc;

			fail_after = k;
			rc = mt_mask_decode(png, plen, 0, &m, &err);
			if (rc == MT_OK)
				mt_mask_free(&m);
			fail_after = k;
			rc = mt_mask_encode_png(pix, 32, 32, &enc, &elen, &err);
			if (rc == MT_OK)
				mt_free(enc);
			else
				clean &= enc == NULL;
			fail_after = -1;
			clean &= live_allocs == 0;
		}
		CHECK(clean, "allocation failures leak nothing (%ld blocks)", live_allocs);
	}
	mt_set_allocator(NULL, NULL);
	free(bad);
	free(png);
	free(jpg);
}

/* Values to classes: binary 0/255 and 0/1, thresholds, multi-class, errors. */
static void
test_classes(void)
{
	uint8_t		d[6];
	mt_mask		m = {3, 2, d, 0};
	mt_err		err;

	memcpy(d, (uint8_t[]) {0, 255, 255, 0, 0, 255}, 6);
	CHECK(mt_mask_to_classes(&m, 2, &err) == MT_OK && memcmp(d, (uint8_t[]) {0, 1, 1, 0, 0, 1}, 6) == 0, "0/255 -> 0/1");
	CHECK(mt_mask_to_classes(&m, 2, &err) == MT_OK && memcmp(d, (uint8_t[]) {0, 1, 1, 0, 0, 1}, 6) == 0, "0/1 stays");
	memcpy(d, (uint8_t[]) {0, 255, 255, 0, 128, 255}, 6);
	CHECK(mt_mask_to_classes(&m, 2, &err) == MT_ERR_INVALID, "128 in a binary mask");
	CHECK(strcmp(err.msg, "mask value 128 at (1, 1): a binary model expects 0/255 (or 0/1)") == 0, "message: %s", err.msg);
	memcpy(d, (uint8_t[]) {0, 200, 127, 128, 1, 255}, 6);
	CHECK(mt_mask_to_classes_threshold(&m, 2, &err) == MT_OK && memcmp(d, (uint8_t[]) {0, 1, 0, 1, 0, 1}, 6) == 0, "threshold at 127");
	memcpy(d, (uint8_t[]) {0, 1, 2, 3, 2, 1}, 6);
	CHECK(mt_mask_to_classes(&m, 4, &err) == MT_OK && memcmp(d, (uint8_t[]) {0, 1, 2, 3, 2, 1}, 6) == 0, "class indices kept");
	CHECK(mt_mask_to_classes(&m, 3, &err) == MT_ERR_INVALID && strstr(err.msg, "mask value 3 at (0, 1)") != NULL, "index 3 of 3 classes: %s", err.msg);
	memcpy(d, (uint8_t[]) {0, 1, 2, 255, 2, 1}, 6);
	CHECK(mt_mask_to_classes_threshold(&m, 3, &err) == MT_ERR_INVALID, "no threshold for multi-class");
	CHECK(mt_mask_to_classes(&m, 1, &err) == MT_ERR_INVALID, "1 class refused");
	CHECK(mt_mask_to_classes(&m, 255, &err) == MT_ERR_INVALID, "255 classes refused");
	CHECK(mt_mask_to_classes(NULL, 2, &err) == MT_ERR_INVALID, "no mask");
}

/* Nearest resize: identity, enlarge by replication, shrink by centres. */
static void
test_resize(void)
{
	uint8_t		d4[16];
	mt_mask		in = {4, 4, d4, 0},
				out;
	mt_err		err;

	for (int i = 0; i < 16; i++)
		d4[i] = (uint8_t) i;
	CHECK(mt_mask_resize_nearest(&in, 4, 4, &out, &err) == MT_OK && memcmp(out.data, d4, 16) == 0, "identity");
	mt_mask_free(&out);
	CHECK(mt_mask_resize_nearest(&in, 2, 2, &out, &err) == MT_OK &&
		  memcmp(out.data, (uint8_t[]) {5, 7, 13, 15}, 4) == 0, "4x4 -> 2x2 takes the centre pixels");
	mt_mask_free(&out);
	CHECK(mt_mask_resize_nearest(&in, 8, 2, &out, &err) == MT_OK &&
		  memcmp(out.data, (uint8_t[]) {4, 4, 5, 5, 6, 6, 7, 7, 12, 12, 13, 13, 14, 14, 15, 15}, 16) == 0,
		  "4x4 -> 8x2");
	mt_mask_free(&out);
	/* 3 -> 7: floor((x + 0.5) * 3 / 7) */
	{
		uint8_t		d3[3] = {10, 20, 30};
		mt_mask		row = {3, 1, d3, 0};

		CHECK(mt_mask_resize_nearest(&row, 7, 1, &out, &err) == MT_OK &&
			  memcmp(out.data, (uint8_t[]) {10, 10, 20, 20, 20, 30, 30}, 7) == 0, "3 -> 7");
		mt_mask_free(&out);
	}
	CHECK(mt_mask_resize_nearest(&in, 0, 4, &out, &err) == MT_ERR_INVALID && out.data == NULL, "0 wide refused");
}

/* Encode -> decode gives the bytes back; probability maps scale to 0..255. */
static void
test_roundtrip(void)
{
	enum
	{
	RW = 37, RH = 23};
	uint8_t		pix[RW * RH];
	float		prob[4] = {0.0f, 0.5f, 1.0f, NAN};
	uint8_t    *enc;
	size_t		len;
	mt_mask		m;
	mt_err		err;
	mt_image_info info;

	for (int i = 0; i < RW * RH; i++)
		pix[i] = (uint8_t) ((i * 131 + 7) & 255);
	CHECK(mt_mask_encode_png(pix, RW, RH, &enc, &len, &err) == MT_OK, "encode: %s", err.msg);
	CHECK(mt_image_probe(enc, len, &info, &err) == MT_OK && info.width == RW && info.height == RH &&
		  info.channels == 1 && info.bit_depth == 8 && strcmp(info.format, "png") == 0, "encoded PNG is 8-bit gray");
	CHECK(mt_mask_decode(enc, len, 0, &m, &err) == MT_OK && m.w == RW && m.h == RH && !m.lossy &&
		  memcmp(m.data, pix, sizeof(pix)) == 0, "round trip");
	mt_mask_free(&m);
	mt_free(enc);
	CHECK(mt_mask_encode_png(pix, 0, RH, &enc, &len, &err) == MT_ERR_INVALID && enc == NULL, "0 wide refused");
	CHECK(mt_mask_encode_prob_png(prob, 2, 2, &enc, &len, &err) == MT_OK, "encode a probability map");
	CHECK(mt_mask_decode(enc, len, 0, &m, &err) == MT_OK &&
		  memcmp(m.data, (uint8_t[]) {0, 128, 255, 0}, 4) == 0, "probabilities 0, .5, 1, NaN -> 0, 128, 255, 0");
	mt_mask_free(&m);
	mt_free(enc);
}

/* Overlap counts: nonzero, class, lossy threshold, size mismatch. */
static void
test_counts(void)
{
	uint8_t		a[6] = {0, 255, 255, 0, 1, 2},
				b[6] = {0, 255, 0, 255, 2, 2};
	mt_mask		p = {3, 2, a, 0},
				t = {3, 2, b, 0},
				t2 = {2, 3, b, 0};
	int64_t		i,
				ps,
				ts;
	mt_err		err;

	CHECK(mt_mask_counts(&p, &t, -1, &i, &ps, &ts, &err) == MT_OK && i == 3 && ps == 4 && ts == 4,
		  "nonzero: %lld %lld %lld", (long long) i, (long long) ps, (long long) ts);
	CHECK(mt_mask_counts(&p, &t, 2, &i, &ps, &ts, &err) == MT_OK && i == 1 && ps == 1 && ts == 2, "class 2");
	CHECK(mt_mask_counts(&p, &t, 0, &i, &ps, &ts, &err) == MT_OK && i == 1 && ps == 2 && ts == 2, "class 0");
	p.lossy = 1;
	CHECK(mt_mask_counts(&p, &t, -1, &i, &ps, &ts, &err) == MT_OK && i == 1 && ps == 2 && ts == 4, "lossy: > 127");
	CHECK(mt_mask_counts(&p, &t2, -1, &i, &ps, &ts, &err) == MT_ERR_SHAPE &&
		  strcmp(err.msg, "masks differ in size: 3x2 and 2x3") == 0, "size mismatch: %s", err.msg);
}

int
main(int argc, char **argv)
{
	test_png_types();
	test_jpeg();
	test_hostile();
	test_classes();
	test_resize();
	test_roundtrip();
	test_counts();
	(void) argc;
	(void) argv;
	return TEST_SUMMARY("mask");
}
