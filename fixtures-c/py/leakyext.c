/* leakyext: a CPython extension module with counted leaks, compiled by the Python tests
 * themselves (tests/tests/python.rs: it needs the interpreter's headers, which the fixture
 * build does not assume) and imported from next to the script, as a developer's in-place
 * build is.
 *
 *   leakyext.pymem(n)  PyMem_Malloc(n), never freed: the extension's leak, though CPython's
 *                      allocator (libpython) made the malloc call
 *   leakyext.raw(n)    malloc(n), never freed
 *   leakyext.clean(n)  PyMem_Malloc + PyMem_Free: nothing */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

/* Exported, so the compiler cannot drop the stores (and the mallocs with them). */
void *leakyext_sink[64];
static int sink_n;

static PyObject *pymem(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    void *p = PyMem_Malloc(n);
    memset(p, 1, n);
    leakyext_sink[sink_n++ % 64] = p;
    Py_RETURN_NONE;
}

static PyObject *raw(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    void *p = malloc(n);
    memset(p, 2, n);
    leakyext_sink[sink_n++ % 64] = p;
    Py_RETURN_NONE;
}

static PyObject *clean(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    void *p = PyMem_Malloc(n);
    memset(p, 3, n);
    PyMem_Free(p);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pymem", pymem, METH_O, "leak n bytes from PyMem_Malloc"},
    {"raw", raw, METH_O, "leak n bytes from malloc"},
    {"clean", clean, METH_O, "allocate and free n bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "leakyext", NULL, -1, methods};

PyMODINIT_FUNC PyInit_leakyext(void) { return PyModule_Create(&module); }
