// Bindings of uncertainty.hpp: per-sample scores, the ensemble decomposition
// (one-shot and streaming) and the confidence loss.
#include "bindings.hpp"
#include "calibkit/uncertainty.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

void check_b(double b) {
    if (!(b > 0.0) || !std::isfinite(b)) throw py::value_error("inverse_temperature must be a positive finite number");
}

py::dict row_scores_py(const py::object& scores_obj, bool from_logits, double inverse_temperature, int kinds) {
    check_b(inverse_temperature);
    if (kinds <= 0 || kinds >= (1 << kNumScores))
        throw py::value_error("kinds must be a non-zero bit mask of the " + std::to_string(kNumScores) +
                              " score kinds, got " + std::to_string(kinds));
    const py::array scores = require_array(scores_obj, "scores");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        double* outs[kNumScores] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
        py::dict d;
        for (int c = 0; c < kNumScores; ++c) {
            if (!((kinds >> c) & 1)) continue;
            if (!from_logits && (c == kEnergy || c == kLogitNorm))
                throw py::value_error("energy and logit_norm need logits (from_logits=True)");
            py::array_t<double> a(s.rows);
            outs[c] = a.mutable_data();
            d[py::int_(c)] = a;
        }
        Status st;
        {
            py::gil_scoped_release release;
            st = row_scores<T>(s, from_logits, inverse_temperature, outs);
        }
        d["status"] = status_tuple(st);
        return d;
    });
}

template <class T>
Passes<T> passes(const py::array& a) {
    require_ndim(a, "samples", 3);
    check_strides(a, "samples");
    return Passes<T>{static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)),
                     static_cast<int64_t>(a.shape(1)), static_cast<int64_t>(a.shape(2)),
                     static_cast<int64_t>(a.strides(0)), static_cast<int64_t>(a.strides(1)),
                     static_cast<int64_t>(a.strides(2))};
}

py::dict ensemble_decompose_py(const py::object& samples_obj, bool from_logits) {
    const py::array samples = require_array(samples_obj, "samples");
    return dispatch_float(samples, "samples", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Passes<T> x = passes<T>(samples);
        if (x.S < 1 || x.N < 1 || x.K < 1) throw py::value_error("samples must not be empty");
        py::array_t<double> mean({x.N, x.K});
        py::array_t<double> total(x.N), aleatoric(x.N), epistemic(x.N), variance(x.N);
        py::array_t<int64_t> prediction(x.N);
        const DecomposeOut out{mean.mutable_data(), total.mutable_data(), aleatoric.mutable_data(),
                               epistemic.mutable_data(), variance.mutable_data(), prediction.mutable_data()};
        Status st;
        {
            py::gil_scoped_release release;
            st = decompose<T>(x, from_logits, out);
        }
        py::dict d;
        d["mean"] = mean;
        d["total"] = total;
        d["aleatoric"] = aleatoric;
        d["epistemic"] = epistemic;
        d["variance"] = variance;
        d["prediction"] = prediction;
        d["status"] = status_tuple(st);
        return d;
    });
}

py::tuple ensemble_update_py(const py::object& member_obj, bool from_logits, int64_t count, const py::object& sum,
                             const py::object& m2, const py::object& entropy_sum) {
    check_size(count, "count", 0, kMaxMembers);
    const py::array member = require_array(member_obj, "member");
    return dispatch_float(member, "member", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> m = matrix<T>(member, "member");
        if (m.cols < 1) throw py::value_error("member must have at least one column");
        double* s = output_array<double>(sum, "sum", {m.rows, m.cols});
        double* q = output_array<double>(m2, "m2", {m.rows, m.cols});
        double* h = output_array<double>(entropy_sum, "entropy_sum", {m.rows});
        Status st;
        {
            py::gil_scoped_release release;
            st = ensemble_update<T>(m, from_logits, count, s, q, h);
        }
        return status_tuple(st);
    });
}

py::dict confidence_loss_py(const py::object& logits_in_obj, const py::object& labels_obj,
                            const py::object& logits_out_obj, double beta) {
    const py::array logits_in = require_array(logits_in_obj, "logits_in");
    const py::array labels = require_array(labels_obj, "labels");
    const py::array logits_out = require_array(logits_out_obj, "logits_out");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    if (!(beta >= 0.0) || !std::isfinite(beta)) throw py::value_error("beta must be a finite number >= 0");
    if (logits_in.dtype().not_equal(logits_out.dtype()))
        throw py::type_error("logits_in and logits_out must have the same dtype");
    return dispatch_float(logits_in, "logits_in", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        using O = std::conditional_t<std::is_same_v<T, double>, double, float>;
        const Matrix<T> zi = matrix<T>(logits_in, "logits_in");
        const Matrix<T> zo = matrix<T>(logits_out, "logits_out");
        if (zi.rows < 1 || zo.rows < 1) throw py::value_error("logits_in and logits_out must not be empty");
        if (zi.cols < 1 || zi.cols != zo.cols)
            throw py::value_error("logits_in and logits_out must have the same number of columns");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", zi.rows);
        py::array_t<O> grad_in({zi.rows, zi.cols}), grad_out({zo.rows, zo.cols});
        O* gi = grad_in.mutable_data();
        O* go = grad_out.mutable_data();
        ConfidenceLossSums a, b;
        {
            py::gil_scoped_release release;
            a = confidence_sums<T, O>(zi, &y, 1.0 / static_cast<double>(zi.rows), gi);
            b = confidence_sums<T, O>(zo, nullptr, beta / static_cast<double>(zo.rows), go);
        }
        py::dict d;
        d["nll"] = a.nll / static_cast<double>(zi.rows);
        d["kl"] = b.kl / static_cast<double>(zo.rows);
        d["grad_in"] = grad_in;
        d["grad_out"] = grad_out;
        d["status_in"] = status_tuple(a.status);
        d["status_out"] = status_tuple(b.status);
        return d;
    });
}

}  // namespace

void bind_uncertainty(py::module_& m) {
    m.def("row_scores", &row_scores_py, py::arg("scores"), py::arg("from_logits").noconvert(),
          py::arg("inverse_temperature"), py::arg("kinds"));
    m.def("ensemble_decompose", &ensemble_decompose_py, py::arg("samples"), py::arg("from_logits").noconvert());
    m.def("ensemble_update", &ensemble_update_py, py::arg("member"), py::arg("from_logits").noconvert(),
          py::arg("count"), py::arg("sum"), py::arg("m2"), py::arg("entropy_sum"));
    m.def("confidence_loss", &confidence_loss_py, py::arg("logits_in"), py::arg("labels"), py::arg("logits_out"),
          py::arg("beta"));
}
