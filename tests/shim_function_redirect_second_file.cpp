// The second source file of shim_function_redirect_test: a file-local function whose name the test's own
// file defines too (shim/program_symbols.h must take neither), called so that the linker keeps it.
extern "C" {
static __attribute__((noinline, used)) int function_redirect_test_twice(int x) { return x * 3; }
int function_redirect_second_file_call(int x) { return function_redirect_test_twice(x); }
}
