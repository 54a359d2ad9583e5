/* Decode one rectangle of a JPEG, at 1/1, 1/2, 1/4 or 1/8 scale, with libjpeg-turbo.
 *
 * decode(data, scale, left, top, right, bottom) -> (pixels, width, height, x0, y0)
 *
 *   data      bytes-like, the JPEG file
 *   scale     1, 2, 4 or 8: the IDCT scales the image by 1/scale while decoding
 *   box       left, top, right, bottom in pixels of the *scaled* image (right and
 *             bottom exclusive; clamped to it)
 *
 * Returns RGB pixels (bytes, height x width x 3) of a region that covers the box:
 * whole rows top..bottom, and columns widened by a small margin (see below) and then
 * to iMCU boundaries as jpeg_crop_scanline() needs; (x0, y0) is that region's top-left corner in the
 * scaled image. Rows above the box are skipped with jpeg_skip_scanlines() and the
 * decoder stops after the last row it needs, so a small crop costs a fraction of a
 * full decode.
 *
 * Raises ValueError for what it does not handle (CMYK/YCCK, a corrupt or truncated
 * file: libjpeg's warnings count as errors here); the caller falls back to Pillow,
 * which then decides. The GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} region_error;

static void on_error(j_common_ptr cinfo) {
    region_error *err = (region_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) { /* a warning: corrupt data; strict here, Pillow decides instead */
        region_error *err = (region_error *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->escape, 1);
    }
}

/* The strict error manager every entry point uses: errors and warnings alike longjmp to
 * err->escape with the message in err->message. */
static struct jpeg_error_mgr *strict_errors(region_error *err) {
    err->message[0] = '\0';
    jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    return &err->pub;
}


/* NOTE [ restart grid ]
 * A JPEG whose restart interval tiles its MCU rows (the interval divides the MCUs of a
 * row: a "grid" of intervals, each starting with fresh DC predictors at a byte boundary
 * after an RSTn marker) can be cut without entropy-decoding what lies outside the crop:
 * the intervals covering the crop, copied in order with their markers renumbered from
 * RST0, with the frame's height and width patched, form a valid JPEG of just that
 * rectangle. Its pixels are the original's (the coefficients are the same bits), except
 * within 2 output pixels of a cut edge, where fancy upsampling replicates chroma instead
 * of reading the neighbour: the rectangle is widened by 4 output pixels each side for
 * that. regrid() writes such files losslessly (fmq-loader regrid). */

typedef struct {
    unsigned char *buf;  /* the stitched JPEG, PyMem_Malloc'd */
    size_t len;
    long yoff, xoff;     /* its top-left corner in the scaled image */
} stitched_jpeg;

/* Offset of the SOF0/SOF1 segment's marker in the header, or -1. */
static long find_sof(const unsigned char *p, size_t header_len) {
    size_t i = 2;
    while (i + 4 <= header_len && p[i] == 0xFF) {
        int m = p[i + 1];
        if (m == 0xFF) { i++; continue; }  /* fill byte */
        if (m == 0xC0 || m == 0xC1)
            return (long)i;
        i += 2 + (((size_t)p[i + 2] << 8) | p[i + 3]);
    }
    return -1;
}

/* Build the stitched JPEG of the intervals covering the scaled box (NOTE [ restart grid ]).
 * Returns 1 when built, 0 when the file has no usable grid or the box needs all of it,
 * -1 when its restart markers are not where the grid says (the caller gives up). */
static int stitch(j_decompress_ptr cinfo, const unsigned char *data, size_t len, int scale,
                  long left, long top, long right, long bottom, stitched_jpeg *out) {
    if (cinfo->restart_interval == 0 || cinfo->progressive_mode || cinfo->arith_code ||
        cinfo->comps_in_scan != cinfo->num_components)
        return 0;
    long mcu_w = 8, mcu_h = 8;
    if (cinfo->comps_in_scan > 1) {
        mcu_w = 8L * cinfo->max_h_samp_factor;
        mcu_h = 8L * cinfo->max_v_samp_factor;
    }
    long width = (long)cinfo->image_width, height = (long)cinfo->image_height;
    long per_row = (width + mcu_w - 1) / mcu_w, rows = (height + mcu_h - 1) / mcu_h;
    long k = (long)cinfo->restart_interval;
    if (per_row % k != 0)
        return 0;
    long tiles = per_row / k;  /* intervals per MCU row */
    long tile_w = mcu_w * k;
    long margin = 4, limit = 1L << 17;  /* JPEG sides are < 2^16: clamp before scaling */
    top = top < -margin ? -margin : (top > limit ? limit : top);
    left = left < -margin ? -margin : (left > limit ? limit : left);
    bottom = bottom < -margin ? -margin : (bottom > limit ? limit : bottom);
    right = right < -margin ? -margin : (right > limit ? limit : right);
    long top_f = (top - margin) * scale, bottom_f = (bottom + margin) * scale;
    long left_f = (left - margin) * scale, right_f = (right + margin) * scale;
    if (top_f < 0) top_f = 0;
    if (left_f < 0) left_f = 0;
    if (bottom_f > height) bottom_f = height;
    if (right_f > width) right_f = width;
    if (bottom_f <= top_f || right_f <= left_f)
        return 0;  /* an empty box: the plain path reports it */
    long r0 = top_f / mcu_h, r1 = (bottom_f + mcu_h - 1) / mcu_h;
    long c0 = left_f / tile_w, c1 = (right_f + tile_w - 1) / tile_w;
    if (r1 > rows) r1 = rows;
    if (c1 > tiles) c1 = tiles;
    if (r0 == 0 && c0 == 0 && c1 == tiles)
        return 0;  /* every column from the top: the plain path reads no more than that */
    size_t header_len = len - cinfo->src->bytes_in_buffer;  /* up to the entropy data */
    long sof = find_sof(data, header_len);
    if (sof < 0 || (size_t)sof + 9 > header_len)
        return 0;
    unsigned char *buf = (unsigned char *)PyMem_Malloc(len + 2);
    if (buf == NULL)
        return -1;
    memcpy(buf, data, header_len);
    long new_h = (r1 - r0) * mcu_h, new_w = (c1 - c0) * tile_w;
    if (r0 * mcu_h + new_h > height) new_h = height - r0 * mcu_h;
    if (c0 * tile_w + new_w > width) new_w = width - c0 * tile_w;
    buf[sof + 5] = (unsigned char)(new_h >> 8);
    buf[sof + 6] = (unsigned char)(new_h & 0xFF);
    buf[sof + 7] = (unsigned char)(new_w >> 8);
    buf[sof + 8] = (unsigned char)(new_w & 0xFF);
    unsigned char *o = buf + header_len;
    const unsigned char *q = data + header_len, *seg = q, *end = data + len;
    long idx = 0, last = r1 * tiles, copied = 0;
    while (idx < last) {
        const unsigned char *f = memchr(q, 0xFF, (size_t)(end - q));
        if (f == NULL || f + 1 >= end)
            break;
        unsigned char m = f[1];
        if (m == 0xFF) { q = f + 1; continue; }  /* fill bytes before a marker */
        if ((m >= 0xD0 && m <= 0xD7) || m == 0xD9) {  /* interval idx is [seg, f) */
            if (m != 0xD9 && m != 0xD0 + (idx & 7))
                break;  /* out of sequence: not the grid we expect */
            long row = idx / tiles, col = idx % tiles;
            if (row >= r0 && col >= c0 && col < c1) {
                memcpy(o, seg, (size_t)(f - seg));
                o += f - seg;
                *o++ = 0xFF;
                *o++ = (unsigned char)(0xD0 + (copied & 7));
                copied++;
            }
            idx++;
            seg = q = f + 2;
            if (m == 0xD9)
                break;
        } else {
            q = f + 2;  /* a stuffed 0xFF00 */
        }
    }
    if (idx < last || copied == 0) {
        PyMem_Free(buf);
        return -1;
    }
    o[-1] = 0xD9;  /* the last interval ends the image */
    out->buf = buf;
    out->len = (size_t)(o - buf);
    out->yoff = r0 * mcu_h / scale;
    out->xoff = c0 * tile_w / scale;
    return 1;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    int scale;
    long left, top, right, bottom;
    if (!PyArg_ParseTuple(args, "y*illll", &data, &scale, &left, &top, &right, &bottom))
        return NULL;
    if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "scale must be 1, 2, 4 or 8, got %d", scale);
        return NULL;
    }
    struct jpeg_decompress_struct cinfo;
    region_error err;
    /* changed after setjmp() and read after a longjmp(): volatile */
    PyObject *volatile out = NULL;
    PyThreadState *volatile unlocked = NULL;  /* the GIL is let go while this is set */
    volatile int failed = 0;
    int unsupported = 0;
    unsigned char *volatile cut_buf = NULL;  /* the stitched JPEG, when there is one */
    volatile long yoff = 0, xoff = 0;  /* its corner in the scaled image */
    JDIMENSION x0 = 0, width = 0, rows = 0;
    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = strict_errors(&err);

    if (setjmp(err.escape)) {
        if (unlocked != NULL) {  /* the error came from inside the unlocked stretch */
            PyEval_RestoreThread(unlocked);
            unlocked = NULL;
        }
        failed = 1;
        goto done;
    }
    jpeg_create_decompress(&cinfo);  /* after setjmp: it can fail (out of memory) */
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE &&
        cinfo.jpeg_color_space != JCS_RGB) {
        unsupported = 1;
        goto done;
    }
    stitched_jpeg cut = {NULL, 0, 0, 0};
    int stitched = stitch(&cinfo, (const unsigned char *)data.buf, (size_t)data.len, scale,
                          left, top, right, bottom, &cut);
    if (stitched < 0) {
        unsupported = 4;
        goto done;
    }
    if (stitched) {  /* decode the rectangle of intervals instead (NOTE [ restart grid ]) */
        cut_buf = cut.buf;
        yoff = cut.yoff;
        xoff = cut.xoff;
        jpeg_abort_decompress(&cinfo);
        jpeg_mem_src(&cinfo, cut.buf, (unsigned long)cut.len);
        jpeg_read_header(&cinfo, TRUE);
        left -= xoff;
        right -= xoff;
        top -= yoff;
        bottom -= yoff;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale;
    cinfo.dct_method = JDCT_ISLOW;  /* as Pillow decodes */
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_calc_output_dimensions(&cinfo);
    long full_w = (long)cinfo.output_width, full_h = (long)cinfo.output_height;
    if (left < 0) left = 0;
    if (top < 0) top = 0;
    if (right > full_w) right = full_w;
    if (bottom > full_h) bottom = full_h;
    if (right <= left || bottom <= top) {
        unsupported = 2;
        goto done;
    }
    rows = (JDIMENSION)(bottom - top);
    /* Fancy upsampling reads the chroma sample beyond a column: at the edge of a cropped
     * region libjpeg replicates the last one instead, which changed edge pixels (up to 5
     * levels). Columns of margin on both sides keep the box's pixels exact. */
    long margin = 4;
    long wide_left = left > margin ? left - margin : 0;
    long wide_right = right + margin < full_w ? right + margin : full_w;
    x0 = (JDIMENSION)wide_left;
    width = (JDIMENSION)(wide_right - wide_left);
    unlocked = PyEval_SaveThread();
    jpeg_start_decompress(&cinfo);
    PyEval_RestoreThread(unlocked);
    unlocked = NULL;
    /* A component whose IDCT was scaled up (a reduced-scale decode of, say, 4:1:0
     * chroma) and that is still upsampled after it gets a wrong row width from
     * jpeg_crop_scanline in libjpeg-turbo 2.1: pixels inside the crop came out wrong
     * (up to 29 levels). Such files go to the fallback decoders. */
    for (int c = 0; c < cinfo.num_components; c++) {
        jpeg_component_info *comp = &cinfo.comp_info[c];
        int upsampled = cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size !=
                        comp->h_samp_factor * comp->DCT_scaled_size;
        if (comp->DCT_scaled_size != cinfo.min_DCT_scaled_size && upsampled) {
            unsupported = 3;
            goto done;
        }
    }
    if (x0 > 0 || width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &x0, &width);  /* widens to iMCU boundaries */
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rows * width * 3);
    if (out == NULL)
        goto done;
    char *pixels = PyBytes_AS_STRING(out);
    unlocked = PyEval_SaveThread();
    if (top > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
    while (cinfo.output_scanline < (JDIMENSION)bottom) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)(cinfo.output_scanline - top) * width * 3);
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    PyEval_RestoreThread(unlocked);
    unlocked = NULL;

done:
    if (failed || unsupported) {
        Py_XDECREF((PyObject *)out);
        out = NULL;
        if (failed)
            PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
        else if (unsupported == 1)
            PyErr_SetString(PyExc_ValueError, "colour space not handled here (CMYK/YCCK)");
        else if (unsupported == 2)
            PyErr_SetString(PyExc_ValueError, "the box is empty or outside the image");
        else if (unsupported == 4)
            PyErr_SetString(PyExc_ValueError, "restart markers out of sequence, or no memory "
                            "for the stitched rectangle");
        else
            PyErr_SetString(PyExc_ValueError, "a sampling layout whose crop libjpeg-turbo 2.1 "
                            "gets wrong at this scale (e.g. 4:1:0)");
    }
    jpeg_destroy_decompress(&cinfo);  /* also after a longjmp: frees what it allocated */
    PyMem_Free(cut_buf);
    PyBuffer_Release(&data);
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(Nkkll)", (PyObject *)out, (unsigned long)width, (unsigned long)rows,
                         (long)x0 + xoff, top + yoff);
}

/* header(data) -> (width, height, components, colour space)
 *
 * Reads the markers up to the first scan (no entropy decoding): the image size for a
 * transform to pick its crop before anything is decoded. colour space is libjpeg's
 * J_COLOR_SPACE number of the file (1 gray, 2 RGB, 3 YCbCr, 4 CMYK, 5 YCCK). Raises
 * ValueError on anything libjpeg complains about, warnings included; the caller asks
 * Pillow instead, which then decides.
 */
static PyObject *header(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    struct jpeg_decompress_struct cinfo;
    region_error err;
    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = strict_errors(&err);
    if (setjmp(err.escape)) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    unsigned long width = cinfo.image_width, height = cinfo.image_height;
    int components = cinfo.num_components, space = (int)cinfo.jpeg_color_space;
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return Py_BuildValue("(kkii)", width, height, components, space);
}

/* regrid(data, interval) -> (jpeg bytes, restart interval in MCUs)
 *
 * Rewrites a JPEG losslessly (the same DCT coefficients, so the same pixels; Huffman
 * tables optimised, baseline sequential) with a restart marker every k MCUs, k the
 * largest divisor of the MCUs in a row that is at most ``interval``: the grid that
 * decode() cuts crops from (NOTE [ restart grid ]). APPn and COM segments (EXIF, ICC)
 * are kept. Raises ValueError on anything libjpeg complains about, warnings included.
 */
static PyObject *regrid(PyObject *self, PyObject *args) {
    Py_buffer data;
    int interval;
    if (!PyArg_ParseTuple(args, "y*i", &data, &interval))
        return NULL;
    if (interval < 1 || interval > 65535) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "interval must be 1 to 65535 MCUs, got %d", interval);
        return NULL;
    }
    struct jpeg_decompress_struct din;
    struct jpeg_compress_struct cout;
    region_error err;
    unsigned char *volatile encoded = NULL;
    unsigned long encoded_len = 0;
    PyThreadState *volatile unlocked = NULL;
    volatile long k = 1;
    memset(&din, 0, sizeof(din));
    memset(&cout, 0, sizeof(cout));
    din.err = strict_errors(&err);
    cout.err = &err.pub;  /* one error manager: either struct's error lands here */
    if (setjmp(err.escape)) {
        if (unlocked != NULL)
            PyEval_RestoreThread(unlocked);
        jpeg_destroy_compress(&cout);
        jpeg_destroy_decompress(&din);
        free(encoded);
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
        return NULL;
    }
    unsigned char *out_buf = NULL;
    unlocked = PyEval_SaveThread();
    jpeg_create_decompress(&din);
    jpeg_create_compress(&cout);
    jpeg_mem_src(&din, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_save_markers(&din, JPEG_COM, 0xFFFF);
    for (int m = 0; m < 16; m++)
        jpeg_save_markers(&din, JPEG_APP0 + m, 0xFFFF);
    jpeg_read_header(&din, TRUE);
    jvirt_barray_ptr *coefs = jpeg_read_coefficients(&din);
    jpeg_copy_critical_parameters(&din, &cout);
    long mcu_w = din.num_components > 1 ? 8L * din.max_h_samp_factor : 8L;
    long per_row = ((long)din.image_width + mcu_w - 1) / mcu_w;
    for (long d = interval < per_row ? interval : per_row; d >= 1; d--)
        if (per_row % d == 0) { k = d; break; }
    cout.restart_interval = (unsigned int)k;
    cout.optimize_coding = TRUE;
    jpeg_mem_dest(&cout, &out_buf, &encoded_len);
    jpeg_write_coefficients(&cout, coefs);
    for (jpeg_saved_marker_ptr m = din.marker_list; m != NULL; m = m->next) {
        if (cout.write_JFIF_header && m->marker == JPEG_APP0 && m->data_length >= 5 &&
            memcmp(m->data, "JFIF", 5) == 0)
            continue;  /* libjpeg writes its own */
        if (cout.write_Adobe_marker && m->marker == JPEG_APP0 + 14 && m->data_length >= 5 &&
            memcmp(m->data, "Adobe", 5) == 0)
            continue;
        jpeg_write_marker(&cout, m->marker, m->data, m->data_length);
    }
    /* libjpeg's memory destination hands its buffer over at finish (before that a
     * failure could leave it to libjpeg, only when out of memory: a leak, not a crash) */
    jpeg_finish_compress(&cout);
    encoded = out_buf;
    jpeg_finish_decompress(&din);
    PyEval_RestoreThread(unlocked);
    unlocked = NULL;
    jpeg_destroy_compress(&cout);
    jpeg_destroy_decompress(&din);
    PyObject *result = PyBytes_FromStringAndSize((const char *)encoded, (Py_ssize_t)encoded_len);
    free(encoded);
    PyBuffer_Release(&data);
    if (result == NULL)
        return NULL;
    return Py_BuildValue("(Nl)", result, (long)k);
}

static PyObject *version(PyObject *self, PyObject *noargs) {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
    return PyLong_FromLong(LIBJPEG_TURBO_VERSION_NUMBER);
#else
    Py_RETURN_NONE;
#endif
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, scale, left, top, right, bottom) -> (rgb bytes, width, height, x0, y0)"},
    {"header", header, METH_VARARGS,
     "header(data) -> (width, height, components, libjpeg colour space number)"},
    {"regrid", regrid, METH_VARARGS,
     "regrid(data, interval) -> (jpeg bytes with a restart marker every k <= interval MCUs, k)"},
    {"version", version, METH_NOARGS, "libjpeg-turbo's version number it was built with"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegregion",
    "Region and reduced-scale JPEG decoding with libjpeg-turbo (see fmq_loader/decode.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__jpegregion(void) { return PyModule_Create(&module); }
