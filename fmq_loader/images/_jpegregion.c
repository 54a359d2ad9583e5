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
    JDIMENSION x0 = 0, width = 0, rows = 0;
    memset(&cinfo, 0, sizeof(cinfo));
    err.message[0] = '\0';
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;

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
        else
            PyErr_SetString(PyExc_ValueError, "a sampling layout whose crop libjpeg-turbo 2.1 "
                            "gets wrong at this scale (e.g. 4:1:0)");
    }
    jpeg_destroy_decompress(&cinfo);  /* also after a longjmp: frees what it allocated */
    PyBuffer_Release(&data);
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(Nkkkl)", (PyObject *)out, (unsigned long)width, (unsigned long)rows,
                         (unsigned long)x0, top);
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
    err.message[0] = '\0';
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
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
    {"version", version, METH_NOARGS, "libjpeg-turbo's version number it was built with"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegregion",
    "Region and reduced-scale JPEG decoding with libjpeg-turbo (see fmq_loader/decode.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__jpegregion(void) { return PyModule_Create(&module); }
