// Bindings of softmax.hpp (scaling losses).
// Each function checks its buffers and releases the GIL around the kernel.
#include "bindings.hpp"
#include "calibkit/scaling.hpp"
#include "calibkit/softmax.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

py::dict temperature_nll_py(const py::object& scores_obj, const py::object& labels_obj,
                            const py::object& sample_weight, double inverse_temperature) {
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    if (!(inverse_temperature > 0.0) || !std::isfinite(inverse_temperature))
        throw py::value_error("inverse_temperature must be a positive finite number");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        TemperatureSums r;
        {
            py::gil_scoped_release release;
            r = temperature_nll<T>(s, y, w, inverse_temperature);
        }
        py::dict d;
        d["count"] = r.count;
        d["weight"] = r.weight;
        d["loss"] = r.loss;
        d["d1"] = r.d1;
        d["d2"] = r.d2;
        d["d3"] = r.d3;
        d["d4"] = r.d4;
        d["d5"] = r.d5;
        d["r4d2"] = r.r4d2;
        d["range"] = r.range;
        d["status"] = status_tuple(r.status);
        return d;
    });
}

// A parameter vector of length K read by index: float64, C-contiguous, aligned.
const double* parameter(const py::object& obj, const char* name, int64_t K) {
    const py::array a = require_array(obj, name);
    const Vector<double> v = typed_vector<double>(a, name);
    if (v.size != K)
        throw py::value_error(std::string(name) + " has length " + std::to_string(v.size) + ", expected K = " +
                              std::to_string(K));
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    return static_cast<const double*>(a.data());
}

py::dict vector_scaling_nll_py(const py::object& scores_obj, const py::object& labels_obj,
                               const py::object& sample_weight, const py::object& scale, const py::object& bias) {
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        const double* a = parameter(scale, "scale", s.cols);
        const double* c = parameter(bias, "bias", s.cols);
        VectorScalingSums r;
        {
            py::gil_scoped_release release;
            r = vector_scaling_nll<T>(s, y, w, a, c);
        }
        py::dict d;
        d["count"] = r.count;
        d["weight"] = r.weight;
        d["loss"] = r.loss;
        d["grad_scale"] = to_array(r.grad_scale);
        d["grad_bias"] = to_array(r.grad_bias);
        d["status"] = status_tuple(r.status);
        return d;
    });
}

// out = scores * scale + bias (vector scaling's transform) into the C-ordered float64 (N, K) out, which
// may be the scores themselves (float64, C-ordered) but no other memory they occupy.
py::tuple vector_scale_py(const py::object& scores_obj, const py::object& scale, const py::object& bias,
                          const py::object& out_obj) {
    const py::array scores = require_array(scores_obj, "scores");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> z = matrix<T>(scores, "scores");
        const double* a = parameter(scale, "scale", z.cols);
        const double* c = parameter(bias, "bias", z.cols);
        double* out = output_array<double>(out_obj, "out", {z.rows, z.cols});
        if (z.rows > 0 && z.cols > 0) {
            const char* lo = z.data + std::min<int64_t>(0, (z.rows - 1) * z.row_stride) +
                             std::min<int64_t>(0, (z.cols - 1) * z.col_stride);
            const char* hi = z.data + std::max<int64_t>(0, (z.rows - 1) * z.row_stride) +
                             std::max<int64_t>(0, (z.cols - 1) * z.col_stride) + sizeof(T);
            const char* o_lo = reinterpret_cast<const char*>(out);
            const char* o_hi = o_lo + z.rows * z.cols * static_cast<int64_t>(sizeof(double));
            const bool same = o_lo == z.data && std::is_same<T, double>::value &&
                              z.col_stride == static_cast<int64_t>(sizeof(double)) &&
                              z.row_stride == z.cols * static_cast<int64_t>(sizeof(double));
            if (lo < o_hi && o_lo < hi && !same)
                throw py::value_error("out overlaps scores: it must be scores itself or separate memory");
        }
        Status st;
        {
            py::gil_scoped_release release;
            st = vector_scale<T>(z, a, c, out);
        }
        return status_tuple(st);
    });
}

}  // namespace

void bind_calibrators(py::module_& m) {
    m.def("temperature_nll", &temperature_nll_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("inverse_temperature"));
    m.def("vector_scaling_nll", &vector_scaling_nll_py, py::arg("scores"), py::arg("labels"),
          py::arg("sample_weight"), py::arg("scale"), py::arg("bias"));
    m.def("vector_scale", &vector_scale_py, py::arg("scores"), py::arg("scale"), py::arg("bias"), py::arg("out"),
          "out = scores * scale + bias for (N, K) logits (vector scaling's transform), into the C-ordered float64 "
          "(N, K) out; returns the status of the first output that is not finite.");
}
