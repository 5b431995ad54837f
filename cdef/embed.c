/*
 * embed.c - the C half of libectls_python.so, compiled into the cffi
 * embedding library that cdef/build_embed.py builds (the set_source
 * preamble includes this file, after Python.h and cffi's embedding code).
 *
 * The public functions of include/ectls_python.h are written here in C,
 * not as cffi's extern "Python" functions, for two reasons.  A cffi
 * embedding library starts Python with Py_InitializeEx(), which ends the
 * process when Python cannot start, and imports _cffi_backend before any
 * of its own code can extend sys.path, so it finds neither cffi nor ectls
 * in a virtual environment.  So the first call starts Python here with
 * Py_InitializeFromConfig(), which reports failure, prepares sys.path and
 * imports ectls; only then does cffi_start_python() run the init code.
 *
 * The Python half (ectls/_embedding.py) implements the extern "Python"
 * functions ectls_python_impl_register and _unregister.  They return the
 * status plus one, so that the 0 which cffi returns when it cannot run
 * Python code differs from ECTLS_PYTHON_OK.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ectls.h"
#include "ectls_python.h"

#define ECTLS_PYTHON_API __attribute__((visibility("default")))
#define ERROR_BUFLEN 1024

static _Thread_local char last_error[ERROR_BUFLEN];

/* Written once by start_once(), read after pthread_once() returns. */
static pthread_once_t start_control = PTHREAD_ONCE_INIT;
static int start_status = ECTLS_PYTHON_ERR_START;
static char start_error[ERROR_BUFLEN];

/* Set by an atexit handler of ectls._embedding: from then on the
 * interpreter is shutting down and no Python code is entered. */
static int python_exiting;

static void set_error(const char *format, ...)
    __attribute__((format(printf, 1, 2)));

static void set_error(const char *format, ...) {
  va_list arguments;
  va_start(arguments, format);
  vsnprintf(last_error, sizeof last_error, format, arguments);
  va_end(arguments);
}

/* Called by the Python half to report a failure's message. */
static void ectls_python_set_error(const char *message) {
  set_error("%s", message);
}

static void ectls_python_set_exiting(void) {
  __atomic_store_n(&python_exiting, 1, __ATOMIC_SEQ_CST);
}

/* A provider that C registers and the ectls package must find in its own
 * list, proving that both use one list (see import_ectls()). */
static char probe_token;

static int probe_provider(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

/* ---- Where this library is installed ---------------------------------- */

/*
 * When this file is <site>/ectls/libectls_python.so beside ectls'
 * __init__.py, store <site> in site_dir, and, when <site> is
 * <venv>/lib/pythonX.Y/site-packages of a virtual environment (a
 * pyvenv.cfg in <venv>) with a bin/python3, that interpreter in
 * venv_python.  Either is left "" otherwise.
 *
 * NOTE: outside a virtual environment, as in an editable install (the
 * library in the source tree) or a pip --target directory, only <site> is
 * added to sys.path, so cffi must be importable from there, from the
 * interpreter's own site-packages or from PYTHONPATH.
 */
static void locate_installation(char *site_dir, char *venv_python) {
  Dl_info info;
  char resolved[PATH_MAX];
  char probe[PATH_MAX + 32];
  char *slash;
  int level;

  site_dir[0] = '\0';
  venv_python[0] = '\0';
  if (!dladdr((void *)&locate_installation, &info) || info.dli_fname == NULL ||
      realpath(info.dli_fname, resolved) == NULL)
    return;
  slash = strrchr(resolved, '/'); /* cut the file name */
  if (slash == NULL)
    return;
  *slash = '\0';
  snprintf(probe, sizeof probe, "%s/__init__.py", resolved);
  slash = strrchr(resolved, '/');
  if (slash == NULL || strcmp(slash + 1, "ectls") != 0 ||
      access(probe, F_OK) != 0)
    return;
  *slash = '\0'; /* cut "ectls" */
  strcpy(site_dir, resolved);

  /* Up three levels: site-packages, pythonX.Y, lib. */
  for (level = 0; level < 3; level++) {
    slash = strrchr(resolved, '/');
    if (slash == NULL || slash == resolved)
      return;
    *slash = '\0';
  }
  snprintf(probe, sizeof probe, "%s/pyvenv.cfg", resolved);
  if (access(probe, F_OK) != 0)
    return;
  snprintf(probe, sizeof probe, "%s/bin/python3", resolved);
  if (access(probe, X_OK) == 0 && strlen(probe) < PATH_MAX)
    strcpy(venv_python, probe);
}

/* ---- Starting Python ---------------------------------------------------- */

/* Store "prefix: ExceptionType: text" of the pending Python exception in
 * start_error, and clear the exception.  Needs the GIL. */
static void store_python_exception(const char *prefix) {
  PyObject *type, *value, *traceback, *text = NULL;
  const char *type_name = "unknown exception", *utf8 = NULL;

  PyErr_Fetch(&type, &value, &traceback);
  PyErr_NormalizeException(&type, &value, &traceback);
  if (type != NULL && PyType_Check(type))
    type_name = ((PyTypeObject *)type)->tp_name;
  if (value != NULL)
    text = PyObject_Str(value);
  if (text != NULL)
    utf8 = PyUnicode_AsUTF8(text);
  snprintf(start_error, sizeof start_error, "%s: %s: %s", prefix, type_name,
           utf8 != NULL ? utf8 : "(no message)");
  Py_XDECREF(text);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(traceback);
  PyErr_Clear();
}

/* Start an interpreter that reports failure instead of ending the process.
 * Returns 1 with the GIL released, or 0 with start_error set. */
static int initialize_interpreter(const char *venv_python) {
  PyConfig config;
  PyStatus status;

  PyConfig_InitPythonConfig(&config);
  /* A guest in a C program: leave signals, argv and C stdio alone. */
  config.install_signal_handlers = 0;
  config.parse_argv = 0;
  config.configure_c_stdio = 0;
  status = PyStatus_Ok();
  if (venv_python[0] != '\0')
    /* Python finds the virtual environment from its interpreter's path,
     * as when that interpreter runs. */
    status = PyConfig_SetBytesString(&config, &config.program_name,
                                     venv_python);
  if (!PyStatus_Exception(status))
    status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_IsExit(status)) {
    snprintf(start_error, sizeof start_error,
             "Python could not start: it exited with status %d during "
             "initialization", status.exitcode);
    return 0;
  }
  if (PyStatus_Exception(status)) {
    snprintf(start_error, sizeof start_error,
             "Python could not start: %s%s%s", status.func ? status.func : "",
             status.func ? ": " : "",
             status.err_msg ? status.err_msg : "unknown error");
    return 0;
  }
  PyEval_SaveThread();
  return 1;
}

/* Append site_dir to sys.path with site.addsitedir() (which also reads
 * its .pth files), unless sys.path already has it.  Needs the GIL.
 * Returns 1, or 0 with start_error set. */
static int add_site_dir(const char *site_dir) {
  PyObject *path, *directory, *site, *result;
  int present;

  path = PySys_GetObject("path"); /* borrowed */
  directory = PyUnicode_DecodeFSDefault(site_dir);
  if (path == NULL || directory == NULL) {
    Py_XDECREF(directory);
    store_python_exception("Python could not start: sys.path is missing");
    return 0;
  }
  present = PySequence_Contains(path, directory);
  if (present == 0) {
    site = PyImport_ImportModule("site");
    result = site != NULL
                 ? PyObject_CallMethod(site, "addsitedir", "O", directory)
                 : NULL;
    Py_XDECREF(site);
    if (result == NULL)
      present = -1;
    Py_XDECREF(result);
  }
  Py_DECREF(directory);
  if (present < 0) {
    store_python_exception("Python could not start: adding the ectls "
                           "site-packages directory to sys.path failed");
    return 0;
  }
  return 1;
}

/* Import ectls._embedding and let it check that the ectls package uses
 * the provider list of the libectls this library is linked against: C
 * registers probe_provider, and the package must find and remove it.
 * While it is registered, calls on other threads may run it, and it
 * returns EC_USE_TLS_NO.  Needs the GIL.  Returns 1, or 0 with
 * start_error set. */
static int import_ectls(void) {
  PyObject *module, *result;

  module = PyImport_ImportModule("ectls._embedding");
  if (module == NULL) {
    store_python_exception(
        "Python could not start: importing the ectls package failed (install "
        "ectls where libectls_python.so is, or add it to PYTHONPATH)");
    return 0;
  }
  if (ectls_register_core_use_outbound_tls_hook(probe_provider, &probe_token,
                                                0, NULL) != 0) {
    Py_DECREF(module);
    snprintf(start_error, sizeof start_error,
             "Python could not start: out of memory");
    return 0;
  }
  result = PyObject_CallMethod(module, "check_same_list", "KK",
                               (unsigned long long)(uintptr_t)probe_provider,
                               (unsigned long long)(uintptr_t)&probe_token);
  Py_DECREF(module);
  if (result == NULL) {
    /* The probe is still in this library's list. */
    ectls_unregister_core_use_outbound_tls_hook(probe_provider, &probe_token);
    store_python_exception("Python could not start");
    return 0;
  }
  Py_DECREF(result);
  return 1;
}

static void start_once(void) {
  char site_dir[PATH_MAX];
  char venv_python[PATH_MAX];
  PyGILState_STATE gil;
  int started_here = 0, ready;

  site_dir[0] = '\0';
  if (!Py_IsInitialized()) {
    locate_installation(site_dir, venv_python);
    if (!initialize_interpreter(venv_python))
      return;
    started_here = 1;
  }
  gil = PyGILState_Ensure();
  /* A running interpreter's sys.path belongs to its program. */
  ready = (!started_here || site_dir[0] == '\0' || add_site_dir(site_dir)) &&
          import_ectls();
  PyGILState_Release(gil);
  if (!ready)
    return;
  /* Runs the init code of cdef/build_embed.py; it prints its own
   * traceback to stderr when it fails. */
  if (cffi_start_python() != 0) {
    snprintf(start_error, sizeof start_error,
             "Python could not start: the init code of libectls_python.so "
             "failed (its traceback is on stderr)");
    return;
  }
  start_status = ECTLS_PYTHON_OK;
}

/* Start Python once per process; returns ECTLS_PYTHON_OK when Python code
 * may be entered now, else sets last_error. */
static int ensure_started(void) {
  pthread_once(&start_control, start_once);
  if (start_status != ECTLS_PYTHON_OK) {
    set_error("%s", start_error);
    return ECTLS_PYTHON_ERR_START;
  }
  if (__atomic_load_n(&python_exiting, __ATOMIC_SEQ_CST) ||
      !Py_IsInitialized()) {
    set_error("Python is exiting or has exited; no Python provider can be "
              "registered or unregistered any more");
    return ECTLS_PYTHON_ERR_START;
  }
  return ECTLS_PYTHON_OK;
}

/* Map what the Python half returned (status plus one, see the top of this
 * file) to a status. */
static int unbias(int biased, const char *function) {
  if (biased < 1 || biased > ECTLS_PYTHON_ERR_PYTHON + 1) {
    set_error("%s: the Python half of libectls_python.so did not run "
              "(returned %d)", function, biased);
    return ECTLS_PYTHON_ERR_START;
  }
  return biased - 1;
}

/* ---- The API of include/ectls_python.h ------------------------------------ */

ECTLS_PYTHON_API int ectls_python_start(void) { return ensure_started(); }

ECTLS_PYTHON_API int ectls_python_register_provider(const char *spec,
                                                    int first,
                                                    ectls_python_id *id) {
  long long new_id = 0;
  int status;

  if (id != NULL)
    *id = 0;
  if (spec == NULL) {
    set_error("ectls_python_register_provider: spec is NULL; expected "
              "\"module:function\"");
    return ECTLS_PYTHON_ERR_ARGUMENT;
  }
  status = ensure_started();
  if (status != ECTLS_PYTHON_OK)
    return status;
  status = unbias(ectls_python_impl_register(spec, first != 0, &new_id),
                  "ectls_python_register_provider");
  if (status == ECTLS_PYTHON_OK && id != NULL)
    *id = new_id;
  return status;
}

ECTLS_PYTHON_API int ectls_python_unregister_provider(ectls_python_id id) {
  int status = ensure_started();
  if (status != ECTLS_PYTHON_OK)
    return status;
  return unbias(ectls_python_impl_unregister(id),
                "ectls_python_unregister_provider");
}

ECTLS_PYTHON_API const char *ectls_python_last_error(void) {
  return last_error;
}
