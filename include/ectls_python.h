/*
 * ectls_python.h - Python providers for C programs (libectls_python.so).
 *
 * libectls_python puts a Python function, named "module:function", into
 * the provider list of libectls and takes it out again.  It registers the
 * function through the ectls Python package, exactly as Python code calling
 * ectls.register_first() or ectls.register_last() would.  So the function
 * receives an ectls.Message that wraps the C message (None for a NULL
 * message).  When it raises or returns something other than a decision,
 * the call yields EC_USE_TLS_REQUIRED.
 *
 * The interpreter.  When the library is loaded into a process where Python
 * already runs (with ctypes, or by an extension module), it uses that
 * interpreter, its sys.path and the ectls package it imported.  Otherwise
 * the first call of a function below starts an interpreter from the
 * libpython the program is linked with.  That interpreter
 * - takes sys.prefix from the virtual environment that libectls_python.so
 *   is installed in, when there is one;
 * - adds the site-packages directory that contains the installed ectls
 *   package to sys.path, when Python's own rules have not;
 * - honours PYTHONPATH (and the other PYTHON* variables) but does not
 *   search the current directory: set PYTHONPATH=. for that;
 * - installs no signal handlers, and is never finalized by this library.
 * A Python that cannot start makes each function here return
 * ECTLS_PYTHON_ERR_START with the reason in ectls_python_last_error(),
 * and the process keeps running.
 *
 * Build a program with
 *   cc $(python -m ectls config --cflags) program.c \
 *      $(python -m ectls config --embed-libs)
 * where python is the interpreter ectls is installed for.
 *
 * Every function here may be called from any thread, and from inside a
 * provider.
 *
 * NOTE: in a Python process, a thread that holds the GIL while it makes
 * the first call (through ctypes.PyDLL, for example) deadlocks if another
 * thread is making a first call at the same moment, because starting
 * needs the GIL.  ctypes.CDLL and cffi release the GIL for the call.
 */
#ifndef ECTLS_PYTHON_H
#define ECTLS_PYTHON_H

#ifdef __cplusplus
extern "C" {
#endif

/* The status the functions below return. */
enum ectls_python_status {
  ECTLS_PYTHON_OK = 0,
  ECTLS_PYTHON_ERR_ARGUMENT = 1,     /* spec NULL or not module:function */
  ECTLS_PYTHON_ERR_START = 2,        /* Python or ectls could not start */
  ECTLS_PYTHON_ERR_IMPORT = 3,       /* importing the module failed */
  ECTLS_PYTHON_ERR_ATTRIBUTE = 4,    /* the module has no such attribute */
  ECTLS_PYTHON_ERR_NOT_CALLABLE = 5, /* the attribute is not callable */
  ECTLS_PYTHON_ERR_NOT_FOUND = 6,    /* no registration has this id */
  ECTLS_PYTHON_ERR_NOMEM = 7,        /* memory ran out */
  ECTLS_PYTHON_ERR_PYTHON = 8        /* another Python exception */
};

/* Identifies one registration; ids start at 1 and are never reused. */
typedef long long ectls_python_id;

/*
 * Start Python and import the ectls package, if that has not happened
 * yet.  The other functions do this by themselves; call this one to start
 * Python at a known point, for example before the program starts threads.
 * Returns ECTLS_PYTHON_OK or ECTLS_PYTHON_ERR_START.  A failed start is
 * not retried: every later call fails with the same reason.
 */
int ectls_python_start(void);

/*
 * Import the module and register the callable that spec names, at the
 * head of the list when first != 0, else at the tail.  spec is
 * "module:function"; the module may be dotted (package.module), and so
 * may the part after the colon (Class.method).  On success, *id (when id
 * is not NULL) receives the id for ectls_python_unregister_provider().
 * Returns ECTLS_PYTHON_OK or an error status, and then the list is
 * unchanged and *id is 0.
 */
int ectls_python_register_provider(const char *spec, int first,
                                   ectls_python_id *id);

/*
 * Remove the provider that ectls_python_register_provider() registered
 * with this id; later calls skip it.  Returns ECTLS_PYTHON_OK,
 * ECTLS_PYTHON_ERR_NOT_FOUND (the id is unknown or already unregistered),
 * ECTLS_PYTHON_ERR_NOMEM or ECTLS_PYTHON_ERR_START.
 */
int ectls_python_unregister_provider(ectls_python_id id);

/*
 * Returns the message of the last failure on the calling thread, which
 * names the spec, module or attribute involved, or "" when no function
 * here has failed on this thread yet.  Successful calls leave it
 * unchanged, like errno.  The library owns the string, and it stays valid
 * until the next failure on this thread.
 */
const char *ectls_python_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* ECTLS_PYTHON_H */
