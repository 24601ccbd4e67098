// group_norm_fused on the CPU: the reference loops (statistics accumulated in double), used by the
// tests and by anyone calling the op on CPU tensors; the modules' CPU path is PyTorch's GroupNorm.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <vector>

#include "group_norm/group_norm.h"

namespace pydetectron {
namespace group_norm {

int64_t check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     int64_t num_groups, const char* op) {
  PYDET_CHECK(x.dim() == 4, op, ": `x` must be a 4-D (N, C, H, W) tensor, got ", x.dim(),
              " dimensions");
  PYDET_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": `x` must be float32 or float64, got ", x.scalar_type());
  PYDET_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": `x` must be contiguous (NCHW) or channels-last (x.permute(0, 2, 3, 1) "
              "contiguous), got strides ", x.strides());
  const int64_t C = x.size(1);
  PYDET_CHECK(num_groups > 0 && C % num_groups == 0, op, ": ", C,
              " channels are not divisible into num_groups=", num_groups);
  for (const auto* t : {&weight, &bias}) {
    const char* name = t == &weight ? "weight" : "bias";
    PYDET_CHECK(t->dim() == 1 && t->size(0) == C, op, ": `", name, "` must have shape (", C,
                "), got ", t->sizes());
    PYDET_CHECK(t->scalar_type() == x.scalar_type(), op, ": `", name, "` is ", t->scalar_type(),
                " but `x` is ", x.scalar_type());
    PYDET_CHECK(t->device() == x.device(), op, ": `", name, "` is on ", t->device(),
                " but `x` is on ", x.device());
  }
  return C / num_groups;
}

void check_residual(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                    const char* op) {
  if (!residual.has_value() || !residual->defined()) return;
  const at::Tensor& r = *residual;
  PYDET_CHECK(r.sizes() == x.sizes(), op, ": `residual` must have the shape of `x` ", x.sizes(),
              ", got ", r.sizes());
  PYDET_CHECK(r.scalar_type() == x.scalar_type() && r.device() == x.device(), op,
              ": `residual` must be ", x.scalar_type(), " on ", x.device(), ", got ",
              r.scalar_type(), " on ", r.device());
  PYDET_CHECK(r.is_contiguous(layout_of(x)), op, ": `residual` must be laid out as `x` (",
              channels_last(x) ? "channels-last" : "contiguous", "), got strides ", r.strides());
}

int64_t check_backward_inputs(const at::Tensor& grad, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups,
                              const char* op) {
  const int64_t D = check_inputs(x, weight, bias, num_groups, op);
  for (const auto* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    PYDET_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == num_groups, op, ": `",
                name, "` must have shape (", x.size(0), ", ", num_groups, "), got ", t->sizes());
    PYDET_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op, ": `",
                name, "` must be ", x.scalar_type(), " on ", x.device());
  }
  PYDET_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() &&
                  grad.device() == x.device(),
              op, ": `grad` must be ", x.scalar_type(), " of shape ", x.sizes(), " on ",
              x.device(), ", got ", grad.scalar_type(), " ", grad.sizes(), " on ", grad.device());
  return D;
}

}  // namespace group_norm

namespace {

// Element (n, c, pixel r) of an image at r * sr + c * sc: channels-last sr = C, sc = 1; NCHW
// sr = 1, sc = HW.
struct Strides {
  int64_t sr, sc;
};

Strides strides_of(bool nhwc, int64_t HW, int64_t C) {
  return nhwc ? Strides{C, 1} : Strides{1, HW};
}

// statistics in double, per (image, group), two passes (mean, then the squared deviations: no
// cancellation)
template <typename T>
void gn_forward_kernel(const T* x, const T* weight, const T* bias, int64_t N, int64_t HW,
                       int64_t C, int64_t G, Strides st, double eps, bool relu, const T* res,
                       T* y, T* mean, T* rstd) {
  const int64_t D = C / G, sr = st.sr, sc = st.sc;
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G;
      const T* xn = x + n * HW * C + g * D * sc;
      double s = 0;
      for (int64_t r = 0; r < HW; ++r)
        for (int64_t d = 0; d < D; ++d) s += xn[r * sr + d * sc];
      const double count = static_cast<double>(HW * D), m = s / count;
      double ss = 0;
      for (int64_t r = 0; r < HW; ++r)
        for (int64_t d = 0; d < D; ++d) {
          const double dev = xn[r * sr + d * sc] - m;
          ss += dev * dev;
        }
      const T mu = static_cast<T>(m), rs = static_cast<T>(1.0 / std::sqrt(ss / count + eps));
      mean[ng] = mu;
      rstd[ng] = rs;
      T* yn = y + n * HW * C + g * D * sc;
      const T* rn = res == nullptr ? nullptr : res + n * HW * C + g * D * sc;
      for (int64_t d = 0; d < D; ++d) {
        T scale, shift;
        group_norm::affine(mu, rs, weight[g * D + d], bias[g * D + d], scale, shift);
        for (int64_t r = 0; r < HW; ++r) {
          T v = group_norm::normalize(xn[r * sr + d * sc], scale, shift);
          if (rn != nullptr) v += rn[r * sr + d * sc];
          yn[r * sr + d * sc] = relu && !(v > T(0)) ? T(0) : v;
        }
      }
    }
  });
}

template <typename T>
void gn_backward_kernel(const T* dy, const T* x, const T* weight, const T* bias, const T* mean,
                        const T* rstd, int64_t N, int64_t HW, int64_t C, int64_t G, Strides st,
                        bool relu, T* dx, double* sum_dy, double* sum_dyx) {
  const int64_t D = C / G, sr = st.sr, sc = st.sc;
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scale(D), shift(D);
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G, c0 = g * D;
      const T* xn = x + n * HW * C + c0 * sc;
      const T* dyn = dy + n * HW * C + c0 * sc;
      for (int64_t d = 0; d < D; ++d)
        group_norm::affine(mean[ng], rstd[ng], weight[c0 + d], bias[c0 + d], scale[d], shift[d]);
      auto passes = [&](int64_t r, int64_t d) {
        return !relu || group_norm::normalize(xn[r * sr + d * sc], scale[d], shift[d]) > T(0);
      };
      double s = 0, t = 0;  // sums over the group of weight * sum(dy * x), weight * sum(dy)
      for (int64_t d = 0; d < D; ++d) {
        double a = 0, b = 0;
        for (int64_t r = 0; r < HW; ++r) {
          if (!passes(r, d)) continue;
          a += dyn[r * sr + d * sc];
          b += static_cast<double>(dyn[r * sr + d * sc]) * xn[r * sr + d * sc];
        }
        sum_dy[n * C + c0 + d] = a;
        sum_dyx[n * C + c0 + d] = b;
        t += a * weight[c0 + d];
        s += b * weight[c0 + d];
      }
      const double count = static_cast<double>(HW * D), mu = mean[ng], rs = rstd[ng];
      const double cb = (t * mu - s) * rs * rs * rs / count;
      const double cc = -cb * mu - t * rs / count;
      T* dxn = dx + n * HW * C + c0 * sc;
      for (int64_t d = 0; d < D; ++d) {
        const double ca = rs * weight[c0 + d];
        for (int64_t r = 0; r < HW; ++r) {
          const double g_in = passes(r, d) ? static_cast<double>(dyn[r * sr + d * sc]) : 0.0;
          dxn[r * sr + d * sc] = static_cast<T>(g_in * ca + xn[r * sr + d * sc] * cb + cc);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t num_groups,
    double eps, bool relu, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "group_norm_fused";
  group_norm::check_inputs(x, weight, bias, num_groups, op);
  group_norm::check_residual(x, residual, op);
  PYDET_CHECK(x.device().is_cpu(), op, ": the CPU kernel got `x` on ", x.device());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const bool nhwc = group_norm::channels_last(x);
  auto y = at::empty_like(x, group_norm::layout_of(x));
  auto mean = at::empty({N, num_groups}, x.options());
  auto rstd = at::empty({N, num_groups}, x.options());
  if (x.numel() == 0) return {y, mean.fill_(0), rstd.fill_(0)};
  const auto w = weight.contiguous(), b = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_forward_cpu", [&] {
    gn_forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                b.data_ptr<scalar_t>(), N, HW, C, num_groups,
                                strides_of(nhwc, HW, C), eps, relu,
                                residual.has_value() && residual->defined()
                                    ? residual->data_ptr<scalar_t>() : nullptr,
                                y.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                                rstd.data_ptr<scalar_t>());
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool relu) {
  constexpr const char* op = "_group_norm_fused_backward";
  const int64_t D =
      group_norm::check_backward_inputs(grad, x, weight, bias, mean, rstd, num_groups, op);
  PYDET_CHECK(x.device().is_cpu(), op, ": the CPU kernel got `x` on ", x.device());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const bool nhwc = group_norm::channels_last(x);
  const auto dy = grad.contiguous(group_norm::layout_of(x));
  auto dx = at::empty_like(x, group_norm::layout_of(x));
  auto dweight = at::empty({C}, x.options()), dbias = at::empty({C}, x.options());
  const auto w = weight.contiguous(), b = bias.contiguous();
  const auto mu = mean.contiguous(), rs = rstd.contiguous();
  std::vector<double> sum_dy(N * C, 0.0), sum_dyx(N * C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_backward_cpu", [&] {
    const scalar_t* m = mu.data_ptr<scalar_t>();
    const scalar_t* r = rs.data_ptr<scalar_t>();
    if (x.numel() > 0)
      gn_backward_kernel<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                   w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), m, r, N, HW,
                                   C, num_groups, strides_of(nhwc, HW, C), relu,
                                   dx.data_ptr<scalar_t>(), sum_dy.data(), sum_dyx.data());
    // dweight = sum over images of rstd * (sum(dy * x) - mean * sum(dy)); dbias = sum(dy)
    for (int64_t c = 0; c < C; ++c) {
      double dw = 0, db = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t ng = n * num_groups + c / D;
        dw += (sum_dyx[n * C + c] - static_cast<double>(m[ng]) * sum_dy[n * C + c]) * r[ng];
        db += sum_dy[n * C + c];
      }
      dweight.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(dw);
      dbias.data_ptr<scalar_t>()[c] = static_cast<scalar_t>(db);
    }
  });
  return {dx, dweight, dbias};
}

}  // namespace pydetectron
