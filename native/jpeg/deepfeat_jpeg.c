/*
 * deepfeat's JPEG decoder (issue 14): libjpeg-turbo called directly, for the one case where
 * decodeImage decodes a JPEG at full size and resamples it itself (services/extractor/image.ts,
 * jpeg-native.ts). libvips reaches the same library through its pipeline at about twice the CPU per
 * image; the pixels are the same (libjpeg's defaults, as libvips leaves them: islow IDCT, fancy
 * upsampling), which image.ts's callers and test/jpeg-native.test.ts check.
 *
 * Two calls, both synchronous (a decoder process decodes one image at a time):
 *   header(bytes) -> { width, height, components, colorSpace, precision, progressive, icc, exif,
 *                      exifSegments, scans } or a string: why libjpeg could not read the header
 *   decode(bytes, x, y, w, h, out) -> undefined, or a string: why it failed
 *     writes the w x h window at (x, y) of the decoded image into out as RGB (grey repeated).
 * Any libjpeg warning (corrupt data, premature end) fails the call, as libvips's fail-on-warning
 * does in sharp: the caller then lets sharp decode the file and name the problem. So does a
 * progressive JPEG whose scans stop before every coefficient is complete: libjpeg then smooths
 * the blocks it has, and that smoothing differs between libjpeg-turbo releases (and reaches past
 * the crop's margin), so only sharp's own library gives sharp's pixels for it.
 */
#include <node_api.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

/* A backstop: jpeg-native.ts leaves files of more than a few scans to sharp before this (a file of
 * thousands of scans costs seconds; decoding it here and then again in sharp would cost twice). */
#define MAX_SCANS 1000

struct err_mgr {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
  struct err_mgr *e = (struct err_mgr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) on_error(cinfo); /* a warning: corrupt or cut-short data */
}

struct progress_mgr {
  struct jpeg_progress_mgr pub;
  j_decompress_ptr cinfo;
};

static void on_progress(j_common_ptr cinfo) {
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  if (d->is_decompressor && d->progressive_mode && d->input_scan_number > MAX_SCANS) {
    struct err_mgr *e = (struct err_mgr *)cinfo->err;
    snprintf(e->message, sizeof e->message, "progressive JPEG with more than %d scans", MAX_SCANS);
    longjmp(e->jump, 1);
  }
}

/* A decompressor whose errors and warnings longjmp to e->jump with the message in e->message
 * (the caller sets the jump point with setjmp right after). */
static void create_decompress(j_decompress_ptr c, struct err_mgr *e) {
  c->err = jpeg_std_error(&e->pub);
  e->pub.error_exit = on_error;
  e->pub.emit_message = on_message;
  e->message[0] = 0;
  jpeg_create_decompress(c);
}

static napi_value str(napi_env env, const char *s) {
  napi_value v;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

static int bytes_arg(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type type;
  size_t length, offset;
  void *base;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &base, &ab, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = base;
  *len = length;
  return 1;
}

static void set_u32(napi_env env, napi_value obj, const char *key, uint32_t n) {
  napi_value v;
  napi_create_uint32(env, n, &v);
  napi_set_named_property(env, obj, key, v);
}

static void set_bool(napi_env env, napi_value obj, const char *key, int b) {
  napi_value v;
  napi_get_boolean(env, b != 0, &v);
  napi_set_named_property(env, obj, key, v);
}

static const char *space_name(J_COLOR_SPACE s) {
  switch (s) {
    case JCS_GRAYSCALE: return "grey";
    case JCS_YCbCr: return "ycbcr";
    case JCS_RGB: return "rgb";
    case JCS_CMYK: return "cmyk";
    case JCS_YCCK: return "ycck";
    default: return "other";
  }
}

static napi_value header(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  unsigned char *data;
  size_t len;
  if (argc < 1 || !bytes_arg(env, argv[0], &data, &len)) {
    napi_throw_type_error(env, NULL, "header(bytes: Uint8Array)");
    return NULL;
  }
  struct jpeg_decompress_struct c;
  struct err_mgr e;
  create_decompress(&c, &e);
  napi_value result = NULL;
  if (setjmp(e.jump)) {
    jpeg_destroy_decompress(&c);
    return str(env, e.message);
  }
  jpeg_mem_src(&c, data, (unsigned long)len);
  jpeg_save_markers(&c, JPEG_APP0 + 1, 0xFFFF);
  jpeg_save_markers(&c, JPEG_APP0 + 2, 0xFFFF);
  jpeg_read_header(&c, TRUE);
  napi_create_object(env, &result);
  set_u32(env, result, "width", c.image_width);
  set_u32(env, result, "height", c.image_height);
  set_u32(env, result, "components", (uint32_t)c.num_components);
  set_u32(env, result, "precision", (uint32_t)c.data_precision);
  set_bool(env, result, "progressive", c.progressive_mode);
  napi_value space = str(env, space_name(c.jpeg_color_space));
  napi_set_named_property(env, result, "colorSpace", space);
  int icc = 0;
  uint32_t exif_segments = 0;
  napi_value exif;
  napi_get_null(env, &exif);
  for (jpeg_saved_marker_ptr m = c.marker_list; m; m = m->next) {
    /* libvips takes any APP2 that starts "ICC_PROFILE" as a profile, NUL after it or not. */
    if (m->marker == JPEG_APP0 + 2 && m->data_length >= 11 && memcmp(m->data, "ICC_PROFILE", 11) == 0) icc = 1;
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
      if (exif_segments++ == 0) {
        void *copy;
        napi_create_buffer_copy(env, m->data_length - 6, m->data + 6, &copy, &exif);
      }
    }
  }
  set_bool(env, result, "icc", icc);
  /* Start-of-scan markers in the whole file (FF DA never occurs inside entropy-coded data, where
   * FF is followed by 00 or a restart marker; an embedded thumbnail's scans count too). */
  uint32_t scans = 0;
  for (const unsigned char *p = data, *end = data + len; p + 1 < end;) {
    const unsigned char *ff = memchr(p, 0xFF, (size_t)(end - p - 1));
    if (!ff) break;
    if (ff[1] == 0xDA) scans++;
    p = ff + 1;
  }
  set_u32(env, result, "scans", scans);
  napi_set_named_property(env, result, "exif", exif);
  set_u32(env, result, "exifSegments", exif_segments);
  jpeg_destroy_decompress(&c);
  return result;
}

static napi_value decode(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  unsigned char *data, *out;
  size_t len, out_len;
  uint32_t x, y, w, h;
  if (argc < 6 || !bytes_arg(env, argv[0], &data, &len) || napi_get_value_uint32(env, argv[1], &x) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &y) != napi_ok || napi_get_value_uint32(env, argv[3], &w) != napi_ok ||
      napi_get_value_uint32(env, argv[4], &h) != napi_ok || !bytes_arg(env, argv[5], &out, &out_len)) {
    napi_throw_type_error(env, NULL, "decode(bytes, x, y, width, height, out: Uint8Array)");
    return NULL;
  }
  if (w == 0 || h == 0 || (uint64_t)w * h * 3 != out_len) {
    napi_throw_range_error(env, NULL, "decode: out must hold width x height x 3 bytes");
    return NULL;
  }
  struct jpeg_decompress_struct c;
  struct err_mgr e;
  struct progress_mgr p;
  create_decompress(&c, &e);
  if (setjmp(e.jump)) {
    jpeg_destroy_decompress(&c);
    return str(env, e.message);
  }
  p.pub.progress_monitor = on_progress;
  p.cinfo = &c;
  c.progress = &p.pub;
  jpeg_mem_src(&c, data, (unsigned long)len);
  jpeg_read_header(&c, TRUE);
  int grey = c.jpeg_color_space == JCS_GRAYSCALE;
  if (c.data_precision != 8 || !(grey || c.jpeg_color_space == JCS_YCbCr)) {
    jpeg_destroy_decompress(&c);
    return str(env, "not an 8-bit YCbCr or greyscale JPEG");
  }
  c.out_color_space = grey ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&c);
  if (c.progressive_mode && c.coef_bits) {
    for (int ci = 0; ci < c.num_components; ci++)
      for (int k = 0; k < DCTSIZE2; k++)
        if (c.coef_bits[ci][k] != 0) {
          jpeg_destroy_decompress(&c);
          return str(env, "a progressive JPEG whose scans stop before its coefficients are complete");
        }
  }
  if ((uint64_t)x + w > c.output_width || (uint64_t)y + h > c.output_height) {
    jpeg_destroy_decompress(&c);
    napi_throw_range_error(env, NULL, "decode: the window is outside the image");
    return NULL;
  }
  /* Only the columns the window needs, only its rows: the rows before and after are skipped,
   * which still reads (and checks) their data; skipping gives the same rows as decoding them. A
   * crop does not: libjpeg widens it to whole iMCUs, but fancy upsampling then treats the crop's
   * edges as the image's (the edge pixels of subsampled chroma come out different), so the crop
   * takes one iMCU more on each side than the window, and the window's pixels are interior ones. */
  const uint32_t imcu = (uint32_t)c.max_h_samp_factor * DCTSIZE;
  JDIMENSION cx = x > imcu ? x - imcu : 0;
  JDIMENSION cend = (uint64_t)x + w + imcu < c.output_width ? x + w + imcu : c.output_width;
  JDIMENSION cw = cend - cx;
  if (cx != 0 || cw != c.output_width) jpeg_crop_scanline(&c, &cx, &cw);
  const int comps = grey ? 1 : 3;
  /* From libjpeg's own pool: released by jpeg_destroy_decompress, on every path. */
  JSAMPROW row = (*c.mem->alloc_sarray)((j_common_ptr)&c, JPOOL_IMAGE, c.output_width * comps, 1)[0];
  if (y > 0) jpeg_skip_scanlines(&c, y);
  const size_t skip = (size_t)(x - cx) * comps;
  for (uint32_t r = 0; r < h; r++) {
    if (jpeg_read_scanlines(&c, &row, 1) != 1) on_error((j_common_ptr)&c);
    unsigned char *dst = out + (size_t)r * w * 3;
    const unsigned char *src = row + skip;
    if (grey) {
      for (uint32_t i = 0; i < w; i++, dst += 3) dst[0] = dst[1] = dst[2] = src[i];
    } else {
      memcpy(dst, src, (size_t)w * 3);
    }
  }
  if (c.output_scanline < c.output_height) jpeg_skip_scanlines(&c, c.output_height - c.output_scanline);
  jpeg_finish_decompress(&c);
  jpeg_destroy_decompress(&c);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"header", NULL, header, NULL, NULL, NULL, napi_default, NULL},
    {"decode", NULL, decode, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
