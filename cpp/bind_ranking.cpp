// Bindings of ranking.hpp (OOD-detection and selective-prediction metrics).
#include "bindings.hpp"
#include "calibkit/ranking.hpp"

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

}  // namespace

void bind_ranking(py::module_& m) {
    m.def("two_sample_ranking", &two_sample_ranking_py, py::arg("pos"), py::arg("neg"), py::arg("target_tpr"),
          py::arg("want_curve").noconvert());
}
