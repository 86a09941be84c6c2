// Bindings of ranking.hpp (OOD-detection and selective-prediction metrics).
#include "bindings.hpp"
#include "calibkit/ranking.hpp"
#include "calibkit/sort.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

py::dict two_sample_ranking_py(const py::object& pos_obj, const py::object& neg_obj, double target_tpr,
                               bool want_curve) {
    if (!(target_tpr >= 0.0 && target_tpr <= 1.0)) throw py::value_error("target_tpr must be in [0, 1]");
    const py::array pos = require_array(pos_obj, "pos");
    const py::array neg = require_array(neg_obj, "neg");
    if (pos.dtype().not_equal(neg.dtype()))
        throw py::type_error("pos and neg must have the same dtype, got " + dtype_name(pos) + " and " +
                             dtype_name(neg));
    return dispatch_float(pos, "pos", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        require_ndim(pos, "pos", 1);
        require_ndim(neg, "neg", 1);
        const Vector<T> p = vector<T>(pos, "pos", pos.shape(0));
        const Vector<T> n = vector<T>(neg, "neg", neg.shape(0));
        if (p.size + n.size < 1) throw py::value_error("pos and neg must not both be empty");
        RankingSummary r;
        RankingCurve curve;
        {
            py::gil_scoped_release release;
            r = two_sample_ranking<T>(p, n, target_tpr, want_curve ? &curve : nullptr);
        }
        py::dict d;
        d["auroc"] = r.auroc;
        d["ap_pos"] = r.ap_pos;
        d["ap_neg"] = r.ap_neg;
        d["fpr_at_tpr"] = r.fpr_at_tpr;
        d["detection_error"] = r.detection_error;
        d["aurc"] = r.aurc;
        d["status"] = status_tuple(r.status);
        if (want_curve) {
            d["thresholds"] = to_array(curve.thresholds);
            d["tp"] = to_array(curve.tp);
            d["fp"] = to_array(curve.fp);
        }
        return d;
    });
}

// Cumulative differences of Arrieta-Ibarra et al. 2022 (calibkit.cumulative): rows in the stable ascending
// order of the scores (one radix sort), S_k = sum_{j<=k} w_j (y_j - p_j) walked in that order from S_0 = 0;
// returns max S - min S, max |S|, sum w and sum w^2 p (1 - p) (both in input order), and, if asked, the order
// and the path S_1..S_n. Outcomes y are 0/1 bytes (a small array to gather from in sorted order); the sorted
// scores come back from the sorted keys, not gathered. Scores must be finite (checked here).
py::dict cumulative_differences_py(const py::object& scores_obj, const py::object& outcomes_obj,
                                   const py::object& weight_obj, bool want_path) {
    const py::array scores = require_array(scores_obj, "scores");
    const py::array outcomes = require_array(outcomes_obj, "outcomes");
    require_ndim(scores, "scores", 1);
    require_dtype(is_dtype<double>(scores), scores, "scores", "float64");
    const int64_t n = static_cast<int64_t>(scores.shape(0));
    if (n < 1) throw py::value_error("scores must not be empty");
    const Vector<double> p = vector<double>(scores, "scores", n);
    require_ndim(outcomes, "outcomes", 1);
    require_dtype(is_dtype<uint8_t>(outcomes), outcomes, "outcomes", "uint8");
    const Vector<uint8_t> y = vector<uint8_t>(outcomes, "outcomes", n);
    const Vector<double> w = optional_vector<double>(weight_obj, "sample_weight", n);
    const bool weighted = w.data != nullptr;
    py::array_t<int64_t> order_arr(n);
    py::array_t<double> path_arr(want_path ? n : 0);
    int64_t* order = order_arr.mutable_data();
    double* path = path_arr.mutable_data();
    int64_t bad = -1;
    double hi = 0.0, lo = 0.0, total = 0.0, variance = 0.0;
    {
        py::gil_scoped_release release;
        for (int64_t i = 0; i < n && bad < 0; ++i)
            if (!std::isfinite(p[i]) || y.raw(i) > 1 || (weighted && !std::isfinite(w[i]))) bad = i;
        if (bad < 0) {
            std::vector<uint64_t> keys;
            stable_argsort(p, order, keys);
            for (int64_t i = 0; i < n; ++i) {
                const double wi = weighted ? w[i] : 1.0;
                const double pi = p[i];
                total += wi;
                variance += wi * wi * (pi * (1.0 - pi));
            }
            double s = 0.0;
            for (int64_t j = 0; j < n; ++j) {
                const int64_t i = order[j];
                const double wi = weighted ? w[i] : 1.0;
                s += wi * (static_cast<double>(y.raw(i)) - key_value(keys[static_cast<size_t>(j)]));
                hi = s > hi ? s : hi;
                lo = s < lo ? s : lo;
                if (want_path) path[j] = s;
            }
        }
    }
    if (bad >= 0)
        throw py::value_error("scores and sample_weight must be finite and outcomes 0 or 1; row " +
                              std::to_string(bad) + " is not");
    py::dict d;
    d["range"] = hi - lo;
    d["max_abs"] = std::max(hi, -lo);
    d["total_weight"] = total;
    d["variance"] = variance;
    if (want_path) {
        d["order"] = order_arr;
        d["path"] = path_arr;
    }
    return d;
}

}  // namespace

void bind_ranking(py::module_& m) {
    m.def("two_sample_ranking", &two_sample_ranking_py, py::arg("pos"), py::arg("neg"), py::arg("target_tpr"),
          py::arg("want_curve").noconvert());
    m.def("cumulative_differences", &cumulative_differences_py, py::arg("scores"), py::arg("outcomes"),
          py::arg("sample_weight"), py::arg("want_path").noconvert());
}
