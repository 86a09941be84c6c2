// The calibkit._core extension: one registration function per kernel group.
#include <pybind11/pybind11.h>

#include "calibkit/parallel.hpp"

namespace py = pybind11;

void bind_binning(py::module_& m);
void bind_stream(py::module_& m);
void bind_calibrators(py::module_& m);
void bind_ranking(py::module_& m);
void bind_uncertainty(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "calibkit native kernels (C++17). Use the Python API in calibkit instead.";
    m.def("get_num_threads", &calibkit::get_num_threads);
    m.def("set_num_threads", &calibkit::set_num_threads, py::arg("n"));
    m.def("hardware_threads", &calibkit::hardware_threads);
    bind_binning(m);
    bind_stream(m);
    bind_calibrators(m);
    bind_ranking(m);
    bind_uncertainty(m);
}
