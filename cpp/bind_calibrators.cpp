// Bindings of softmax.hpp (scaling losses) and pav.hpp (isotonic regression).
// Each function checks its buffers and releases the GIL around the kernel.
#include "bindings.hpp"
#include "calibkit/pav.hpp"
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

// Every value finite (and, for weights, > 0): PAV on NaN or on zero total weight gives NaN blocks.
void check_finite(const Vector<double>& v, const char* name, bool positive) {
    for (int64_t i = 0; i < v.size; ++i) {
        const double value = v[i];
        if (!is_finite(value) || (positive && !(value > 0.0)))
            throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(value) +
                                  (positive ? " is not a finite number > 0" : " is not finite"));
    }
}

py::dict isotonic_fit_py(const py::object& y_obj, const py::object& x, const py::object& sample_weight,
                         bool increasing) {
    const Vector<double> yv = typed_vector<double>(require_array(y_obj, "y"), "y");
    const int64_t n = yv.size;
    const Vector<double> xv = optional_vector<double>(x, "x", n);
    const Vector<double> wv = optional_vector<double>(sample_weight, "sample_weight", n);
    check_finite(yv, "y", false);
    if (xv.data) check_finite(xv, "x", false);
    if (wv.data) check_finite(wv, "sample_weight", true);
    py::array_t<double> fitted(n);
    double* f = fitted.mutable_data();
    py::object order_obj = py::none();
    PavBlocks blocks;
    if (xv.data) {
        py::array_t<int64_t> order(n);
        int64_t* o = order.mutable_data();
        {
            py::gil_scoped_release release;
            blocks = isotonic(yv, wv, wv.data != nullptr, &xv, increasing, o, f);
        }
        order_obj = order;
    } else {
        py::gil_scoped_release release;
        blocks = isotonic(yv, wv, wv.data != nullptr, nullptr, increasing, nullptr, f);
    }
    py::dict d;
    d["fitted"] = fitted;
    d["order"] = order_obj;
    d["blocks"] = to_array(blocks.starts);
    d["values"] = to_array(blocks.values);
    d["weights"] = to_array(blocks.weights);
    return d;
}

}  // namespace

void bind_calibrators(py::module_& m) {
    m.def("temperature_nll", &temperature_nll_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("inverse_temperature"));
    m.def("vector_scaling_nll", &vector_scaling_nll_py, py::arg("scores"), py::arg("labels"),
          py::arg("sample_weight"), py::arg("scale"), py::arg("bias"));
    m.def("isotonic_fit", &isotonic_fit_py, py::arg("y"), py::arg("x"), py::arg("sample_weight"),
          py::arg("increasing").noconvert());
}
