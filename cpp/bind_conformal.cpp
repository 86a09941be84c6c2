// Bindings of conformal.hpp: the calibration scores of the labels and the prediction sets.
#include <cmath>
#include <string>

#include "bindings.hpp"
#include "calibkit/conformal.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

// Largest k_reg accepted (a rank: anything above the class count acts as the class count).
constexpr int64_t kMaxKreg = int64_t{1} << 40;

ConformalParams conformal_params(int kind, double penalty, int64_t kreg, double weight) {
    if (kind < 0 || kind >= kNumConformalScores)
        throw py::value_error("kind must be in [0, " + std::to_string(kNumConformalScores - 1) + "], got " +
                              std::to_string(kind));
    if (!(penalty >= 0.0) || !std::isfinite(penalty))
        throw py::value_error("penalty must be a finite number >= 0, got " + std::to_string(penalty));
    check_size(kreg, "kreg", 0, kMaxKreg);
    if (!(weight > 0.0) || !std::isfinite(weight))
        throw py::value_error("weight must be a finite number > 0, got " + std::to_string(weight));
    ConformalParams c;
    c.kind = kind;
    c.penalty = penalty;
    c.kreg = kreg;
    c.weight = weight;
    return c;
}

// The row uniforms: None, or float64 of length n with every value in [0, 1).
const double* uniforms(const py::object& obj, int64_t n) {
    if (obj.is_none()) return nullptr;
    const py::array a = exact_dtype_array<double>(obj, "u");
    require_ndim(a, "u", 1);
    if (static_cast<int64_t>(a.shape(0)) != n)
        throw py::value_error("u has length " + std::to_string(a.shape(0)) + ", expected " + std::to_string(n));
    check_strides(a, "u");
    if (!(a.flags() & py::array::c_style)) throw py::value_error("u must be C-contiguous");
    const double* u = static_cast<const double*>(a.data());
    for (int64_t i = 0; i < n; ++i)
        if (!(u[i] >= 0.0 && u[i] < 1.0))
            throw py::value_error("u[" + std::to_string(i) + "] = " + std::to_string(u[i]) + " is not in [0, 1)");
    return u;
}

template <class T>
Matrix<T> score_matrix(const py::array& scores) {
    const Matrix<T> s = matrix<T>(scores, "scores");
    if (s.cols < 1) throw py::value_error("scores must have at least one column");
    return s;
}

py::dict label_scores_py(const py::object& scores_obj, const py::object& labels_obj, bool from_logits, int kind,
                         double penalty, int64_t kreg, double weight, const py::object& u_obj) {
    const ConformalParams c = conformal_params(kind, penalty, kreg, weight);
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = score_matrix<T>(scores);
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const double* u = uniforms(u_obj, s.rows);
        py::array_t<double> out(s.rows);
        double* o = out.mutable_data();
        Status st;
        {
            py::gil_scoped_release release;
            st = conformal_label_scores<T>(s, y, from_logits, c, u, o);
        }
        py::dict d;
        d["scores"] = out;
        d["status"] = status_tuple(st);
        return d;
    });
}

py::tuple sets_py(const py::object& scores_obj, bool from_logits, int kind, double penalty, int64_t kreg,
                  double weight, const py::object& thresholds_obj, const py::object& u_obj, const py::object& out_obj,
                  const py::object& sizes_obj) {
    const ConformalParams c = conformal_params(kind, penalty, kreg, weight);
    const py::array scores = require_array(scores_obj, "scores");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = score_matrix<T>(scores);
        const Vector<double> qv = typed_vector<double>(require_array(thresholds_obj, "thresholds"), "thresholds");
        if (qv.size != s.cols)
            throw py::value_error("thresholds has length " + std::to_string(qv.size) + ", expected " +
                                  std::to_string(s.cols) + " (one per class)");
        std::vector<double> q(static_cast<size_t>(s.cols));
        for (int64_t k = 0; k < s.cols; ++k) {
            q[static_cast<size_t>(k)] = qv.raw(k);
            if (std::isnan(q[static_cast<size_t>(k)]))
                throw py::value_error("thresholds[" + std::to_string(k) + "] is NaN");
        }
        const double* u = uniforms(u_obj, s.rows);
        uint8_t* out = output_array<uint8_t>(out_obj, "out", {s.rows, s.cols});
        int64_t* sizes = output_array<int64_t>(sizes_obj, "sizes", {s.rows});
        Status st;
        {
            py::gil_scoped_release release;
            st = conformal_sets<T>(s, from_logits, c, q.data(), u, out, sizes);
        }
        return status_tuple(st);
    });
}

}  // namespace

void bind_conformal(py::module_& m) {
    m.def("conformal_label_scores", &label_scores_py, py::arg("scores"), py::arg("labels"),
          py::arg("from_logits").noconvert(), py::arg("kind"), py::arg("penalty"), py::arg("kreg"),
          py::arg("weight"), py::arg("u"));
    m.def("conformal_sets", &sets_py, py::arg("scores"), py::arg("from_logits").noconvert(), py::arg("kind"),
          py::arg("penalty"), py::arg("kreg"), py::arg("weight"), py::arg("thresholds"), py::arg("u"),
          py::arg("out"), py::arg("sizes"));
}
