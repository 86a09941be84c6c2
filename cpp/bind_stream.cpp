// Bindings of stream.hpp: accumulate rows into caller-owned state arrays, GIL released.
#include "bindings.hpp"
#include "calibkit/stream.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

double* state_array(py::array a, const char* name, std::initializer_list<int64_t> shape) {
    if (!is_dtype<double>(a)) throw py::type_error(std::string(name) + " must be float64");
    if (!(a.flags() & py::array::c_style) || !a.writeable())
        throw py::value_error(std::string(name) + " must be a writeable C-contiguous array");
    if (a.ndim() != static_cast<py::ssize_t>(shape.size())) throw py::value_error(std::string(name) + " has the wrong shape");
    py::ssize_t d = 0;
    for (int64_t s : shape)
        if (a.shape(d++) != s) throw py::value_error(std::string(name) + " has the wrong shape");
    return static_cast<double*>(a.mutable_data());
}

template <class L>
py::tuple accumulate_typed(const py::array& confidence, const py::array& target, const py::object& sample_weight,
                           uint64_t offset, int64_t n_bins, int64_t fine_bits, int64_t fine_levels, int64_t n_boot,
                           uint64_t seed, const py::array& bins, const py::array& fine, const py::array& boot) {
    return dispatch_float(confidence, "confidence", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        if (confidence.ndim() != 1) throw py::value_error("confidence must be 1-D");
        const Vector<T> c = vector<T>(confidence, "confidence", confidence.shape(0));
        const Vector<L> t = vector<L>(target, "target", c.size);
        const Weights w = weights(sample_weight, c.size);
        double* b = state_array(bins, "bins", {4, n_bins});
        const FineGrid grid{fine_bits, fine_levels};
        double* f = state_array(fine, "fine", {5, grid.size()});
        double* r = state_array(boot, "boot", {n_boot, 3, n_bins});
        Status st;
        {
            py::gil_scoped_release release;
            st = stream_accumulate<T, L>(c, t, w, offset, n_bins, grid, n_boot, seed, b, f, r);
        }
        return status_tuple(st);
    });
}

py::tuple stream_accumulate_py(const py::array& confidence, const py::array& target, const py::object& sample_weight,
                               uint64_t offset, int64_t n_bins, int64_t fine_bits, int64_t fine_levels, int64_t n_boot,
                               uint64_t seed, const py::array& bins, const py::array& fine, const py::array& boot) {
    if (n_bins < 1 || fine_bits < 0 || fine_bits > 20 || fine_levels < 1 || fine_levels > 1000 || n_boot < 0)
        throw py::value_error("invalid streaming configuration");
    if (is_dtype<int64_t>(target))
        return accumulate_typed<int64_t>(confidence, target, sample_weight, offset, n_bins, fine_bits, fine_levels,
                                         n_boot, seed, bins, fine, boot);
    if (is_dtype<uint8_t>(target))
        return accumulate_typed<uint8_t>(confidence, target, sample_weight, offset, n_bins, fine_bits, fine_levels,
                                         n_boot, seed, bins, fine, boot);
    throw py::type_error("target must have dtype int64 or uint8, got " + dtype_name(target));
}

}  // namespace

void bind_stream(py::module_& m) {
    m.def("stream_accumulate", &stream_accumulate_py, py::arg("confidence"), py::arg("target"),
          py::arg("sample_weight"), py::arg("offset"), py::arg("n_bins"), py::arg("fine_bits"), py::arg("fine_levels"),
          py::arg("n_boot"), py::arg("seed"), py::arg("bins"), py::arg("fine"), py::arg("boot"));
}
