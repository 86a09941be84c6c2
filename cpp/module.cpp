// The calibkit._core extension: one registration function per kernel group.
#include <pybind11/pybind11.h>

#include <atomic>
#include <new>
#include <stdexcept>
#include <string>

#include "calibkit/parallel.hpp"
#include "calibkit/simd.hpp"

namespace py = pybind11;

void bind_binning(py::module_& m);
void bind_stream(py::module_& m);
void bind_calibrators(py::module_& m);
void bind_isotonic(py::module_& m);
void bind_ranking(py::module_& m);
void bind_smooth(py::module_& m);
void bind_uncertainty(py::module_& m);
void bind_conformal(py::module_& m);

namespace {

// Test hook: runs n_tasks pool tasks on n_threads threads with the GIL released.
// kind "ok" returns the number of tasks that ran; "bad_alloc" / "runtime_error"
// make tasks 3 and 7 throw (task 3's exception must come back, as MemoryError /
// RuntimeError); "nested" makes every task run a nested parallel loop (which
// must run serially on the task's thread, never deadlock) and returns the
// number of inner tasks that ran.
int64_t pool_selftest(const std::string& kind, int64_t n_tasks, int n_threads) {
    if (kind != "ok" && kind != "bad_alloc" && kind != "runtime_error" && kind != "nested")
        throw py::value_error("kind must be 'ok', 'bad_alloc', 'runtime_error' or 'nested', got '" + kind + "'");
    if (n_tasks < 0 || n_tasks > (1 << 20)) throw py::value_error("n_tasks must be in [0, 2**20]");
    if (n_threads < 1 || n_threads > 256) throw py::value_error("n_threads must be in [1, 256]");
    std::atomic<int64_t> ran{0};
    {
        py::gil_scoped_release release;
        std::function<void(int64_t)> task = [&](int64_t i) {
            if (kind == "nested") {
                std::function<void(int64_t)> inner = [&](int64_t) { ran.fetch_add(1); };
                calibkit::ThreadPool::instance().run(4, n_threads, inner);
                return;
            }
            if (i == 3 || i == 7) {
                if (kind == "bad_alloc") throw std::bad_alloc();
                if (kind == "runtime_error") throw std::runtime_error("pool self-test: task " + std::to_string(i));
            }
            ran.fetch_add(1);
        };
        calibkit::ThreadPool::instance().run(n_tasks, n_threads, task);
    }  // the GIL is held again here, so an exception thrown by run() is translated by pybind11
    return ran.load();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "calibkit native kernels (C++17). Use the Python API in calibkit instead.";
    m.def("get_num_threads", &calibkit::get_num_threads);
    m.def("set_num_threads", &calibkit::set_num_threads, py::arg("n"));
    m.def("hardware_threads", &calibkit::hardware_threads);
    m.def("usable_cpus", &calibkit::usable_cpus,
          "CPUs this process may use: its affinity mask, lowered to a cgroup CPU quota.");
    m.def("default_num_threads", &calibkit::default_num_threads,
          "usable_cpus() capped by CALIBKIT_NUM_THREADS, else OMP_NUM_THREADS, when set.");
    m.def("simd_path", &calibkit::simd::path_name,
          "The kernels' lane implementation in this build: 'gnu-vector' (GCC/Clang vector extensions) or "
          "'portable' (plain C++17, built with CALIBKIT_PORTABLE_SIMD or by a compiler without them); "
          "both give bit-identical results.");
    m.def("_pool_selftest", &pool_selftest, py::arg("kind"), py::arg("n_tasks") = 16, py::arg("n_threads") = 2);
    bind_binning(m);
    bind_stream(m);
    bind_calibrators(m);
    bind_isotonic(m);
    bind_ranking(m);
    bind_smooth(m);
    bind_uncertainty(m);
    bind_conformal(m);
}
