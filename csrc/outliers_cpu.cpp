// Exact k-nearest-neighbour mean distances for the statistical outlier filter
// (infinidepth/sampling/outliers.py has the contract; scipy's cKDTree is the reference it is tested against).
//
// Two ops share one tree, so that Python can query it in chunks (a progress bar, bounded memory):
//
// * knn_tree(points [N, 3] f64, leaf) -> (coords [3, N] f64, order [N] i64, boxes [M, 6] f64): a k-d tree
//   whose shape depends on N and `leaf` only. The node over points [b, e) of the tree order splits at
//   b + (e - b) / 2 along the widest side of its bounding box (nth_element), down to one depth D for all
//   leaves: the smallest D with ceil(N / 2^D) <= leaf. Nodes are numbered as in a binary heap (children of
//   i: 2i + 1, 2i + 2), so M = 2^(D + 1) - 1 and no child or range array exists that a caller could get
//   wrong. coords holds the points in tree order, one row per axis; order[j] is the input index of tree
//   point j; boxes[i] = (min x, min y, min z, max x, max y, max z) of node i's points.
// * knn_mean_distance(coords, boxes, leaf, k, begin, end) -> [end - begin] f64: for tree points begin..end-1,
//   the mean Euclidean distance to their k nearest tree points, themselves included.
//
// Exactness. Distances are computed in f64 with cKDTree's formula (sqrt of dx^2 + dy^2 + dz^2, summed in that
// order, no FMA), and the k smallest are found exactly, ties included (any of several tied points gives the
// same distances). Every pruning test is exact under rounding: a box's computed distance never exceeds a
// computed distance to a point inside it (rounding is monotonic), and a box is skipped only when that
// distance is at least the current bound. Bounds from the triangle inequality are widened by a relative
// 1e-9, far over the rounding (~1e-15) of their parts.
//
// Order of work. Queries run in tree order, and each leaf's points are themselves ordered along a k-d path,
// so consecutive queries are close. Each query starts from a bound on its k-th distance: the previous
// query's k-th plus the distance between the two. A leaf's first query walks the tree from the root,
// nearer child first, with a max-heap of k squared distances filled with that bound. Its k-th distance
// then bounds every other query q of the leaf (kth(q) <= kth(first) + |q - first|), so one walk lists the
// leaves they can need; each of them keeps the squared distances under its own bound from those leaves
// and selects the k smallest (a quickselect whose first pivot is the previous query's k-th).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#pragma GCC optimize("fp-contract=off")

namespace infinidepth {

namespace {

// Leaf depth of the tree over n points (see above).
int tree_depth(int64_t n, int64_t leaf) {
  int d = 0;
  while (((n + (int64_t{1} << d) - 1) >> d) > leaf) ++d;
  return d;
}

struct Item {
  double x[3];
  int64_t index;
};

void set_box(const Item* p, int64_t b, int64_t e, double* box) {
  double lo[3] = {p[b].x[0], p[b].x[1], p[b].x[2]}, hi[3] = {lo[0], lo[1], lo[2]};
  for (int64_t j = b + 1; j < e; ++j)
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], p[j].x[a]);
      hi[a] = std::max(hi[a], p[j].x[a]);
    }
  for (int a = 0; a < 3; ++a) {
    box[a] = lo[a];
    box[3 + a] = hi[a];
  }
}

// Sets the box of items [b, e) (never empty: leaf >= 2 and the depth rule make every node hold a point)
// and splits them at the middle along its widest side; returns the middle.
int64_t split(Item* p, int64_t b, int64_t e, double* box) {
  set_box(p, b, e, box);
  const int64_t m = b + (e - b) / 2;
  int axis = 0;
  for (int a = 1; a < 3; ++a)
    if (box[3 + a] - box[a] > box[3 + axis] - box[axis]) axis = a;
  std::nth_element(p + b, p + m, p + e, [axis](const Item& u, const Item& v) { return u.x[axis] < v.x[axis]; });
  return m;
}

// Orders a leaf's items along a k-d path of their own (halves along the widest side, down to pairs), so
// that consecutive queries are close and each one's seeded bound is tight.
void order_leaf(Item* p, int64_t b, int64_t e) {
  if (e - b <= 2) return;
  double box[6];
  const int64_t m = split(p, b, e, box);
  order_leaf(p, b, m);
  order_leaf(p, m, e);
}

// Builds node `node` (depth `depth`) over items [b, e) and everything below it.
void build(Item* p, int64_t node, int depth, int D, int64_t b, int64_t e, double* boxes) {
  if (depth == D) {
    set_box(p, b, e, boxes + 6 * node);
    return order_leaf(p, b, e);
  }
  const int64_t m = split(p, b, e, boxes + 6 * node);
  build(p, 2 * node + 1, depth + 1, D, b, m, boxes);
  build(p, 2 * node + 2, depth + 1, D, m, e, boxes);
}

// Squared distance from q to the box, computed so that it never exceeds a computed point distance.
inline double box_distance2(const double* box, double qx, double qy, double qz) {
  const double gx = qx < box[0] ? box[0] - qx : (qx > box[3] ? qx - box[3] : 0.0);
  const double gy = qy < box[1] ? box[1] - qy : (qy > box[4] ? qy - box[4] : 0.0);
  const double gz = qz < box[2] ? box[2] - qz : (qz > box[5] ? qz - box[5] : 0.0);
  return gx * gx + gy * gy + gz * gz;
}

// A max-heap of the k smallest squared distances seen (heap[0]: the largest of them).
struct KHeap {
  double* h;
  int k;
  void fill(double v) { std::fill(h, h + k, v); }
  double top() const { return h[0]; }
  void replace_top(double v) {  // v < top()
    int i = 0;
    for (;;) {
      const int l = 2 * i + 1;
      if (l >= k) break;
      const int r = l + 1;
      const int c = (r < k && h[r] > h[l]) ? r : l;
      if (h[c] <= v) break;
      h[i] = h[c];
      i = c;
    }
    h[i] = v;
  }
};

struct Query {
  const double *X, *Y, *Z, *boxes;
  int64_t n;
  int D;
};

inline void scan_leaf(const Query& t, int64_t b, int64_t e, double qx, double qy, double qz, KHeap& heap,
                      double* buf) {
  const double *X = t.X + b, *Y = t.Y + b, *Z = t.Z + b;
  const int64_t len = e - b;
  for (int64_t j = 0; j < len; ++j) {
    const double dx = X[j] - qx, dy = Y[j] - qy, dz = Z[j] - qz;
    buf[j] = dx * dx + dy * dy + dz * dz;
  }
  for (int64_t j = 0; j < len; ++j)
    if (buf[j] < heap.top()) heap.replace_top(buf[j]);
}

// Walks the tree from the root (skipping leaf `own`, already scanned) for query (qx, qy, qz).
void walk(const Query& t, int64_t own, double qx, double qy, double qz, KHeap& heap, double* buf) {
  struct Entry {
    int64_t node, b, e;
    int depth;
    double d2;
  };
  Entry stack[64];
  int top = 0;
  stack[top++] = {0, 0, t.n, 0, 0.0};
  while (top > 0) {
    Entry s = stack[--top];
    if (s.d2 >= heap.top()) continue;
    for (;;) {  // descend towards the nearer child, stacking the farther
      if (s.depth == t.D) {
        if (s.node != own) scan_leaf(t, s.b, s.e, qx, qy, qz, heap, buf);
        break;
      }
      const int64_t m = s.b + (s.e - s.b) / 2;
      const int64_t l = 2 * s.node + 1, r = l + 1;
      const double dl = box_distance2(t.boxes + 6 * l, qx, qy, qz), dr = box_distance2(t.boxes + 6 * r, qx, qy, qz);
      Entry near{l, s.b, m, s.depth + 1, dl}, far{r, m, s.e, s.depth + 1, dr};
      if (dr < dl) std::swap(near, far);
      const double bound = heap.top();
      if (far.d2 < bound) stack[top++] = far;
      if (near.d2 >= bound) break;
      s = near;
    }
  }
}

// Leaf over tree point j: its node, and its points [b, e).
inline void locate(const Query& t, int64_t j, int64_t& node, int64_t& b, int64_t& e) {
  node = 0, b = 0, e = t.n;
  for (int d = 0; d < t.D; ++d) {
    const int64_t m = b + (e - b) / 2;
    if (j < m) node = 2 * node + 1, e = m;
    else node = 2 * node + 2, b = m;
  }
}

struct Candidate {
  int64_t node, b, e;
  double d2;  // squared distance between its box and the query leaf's
};

inline double box_box_distance2(const double* u, const double* v) {
  double s = 0;
  for (int a = 0; a < 3; ++a) {
    const double g = std::max({0.0, u[a] - v[3 + a], v[a] - u[3 + a]});
    s += g * g;
  }
  return s;
}

// The leaves whose box lies within sqrt(r2) of box `own` (every node's box holds its leaves' boxes).
void collect(const Query& t, const double* own, double r2, std::vector<Candidate>& out) {
  struct Entry {
    int64_t node, b, e;
    int depth;
  };
  Entry stack[128];
  int top = 0;
  out.clear();
  stack[top++] = {0, 0, t.n, 0};
  while (top > 0) {
    const Entry s = stack[--top];
    const double d2 = box_box_distance2(t.boxes + 6 * s.node, own);
    if (d2 > r2) continue;
    if (s.depth == t.D) {
      out.push_back({s.node, s.b, s.e, d2});
      continue;
    }
    const int64_t m = s.b + (s.e - s.b) / 2;
    stack[top++] = {2 * s.node + 2, m, s.e, s.depth + 1};
    stack[top++] = {2 * s.node + 1, s.b, m, s.depth + 1};
  }
  std::sort(out.begin(), out.end(), [](const Candidate& u, const Candidate& v) { return u.d2 < v.d2; });
}

// a[lo:hi] reordered so that the values below `pivot` come first (branch-free Lomuto); returns where they end.
inline int64_t partition_below(double* a, int64_t lo, int64_t hi, double pivot) {
  int64_t c = lo;
  for (int64_t i = lo; i < hi; ++i) {
    const double x = a[i];
    a[i] = a[c];
    a[c] = x;
    c += x < pivot;
  }
  return c;
}

inline double median3(double u, double v, double w) { return std::max(std::min(u, v), std::min(std::max(u, v), w)); }

// Moves the k smallest of a[0:m] (m >= k >= 1) to a[0:k], in any order. A quickselect whose first pivot is
// `guess` (the previous query's k-th: close to this one's), then medians of three.
void select_smallest(double* a, int64_t m, int64_t k, double guess) {
  int64_t lo = 0, hi = m;  // a[0:lo] are among the k smallest, a[hi:m] are not, k <= hi
  double pivot = guess;
  bool element = false;  // whether the pivot is a value of a[lo:hi] (then ties with it are settled at once)
  while (lo < k) {
    if (hi - lo <= 12) {  // insertion sort of the rest
      for (int64_t i = lo + 1; i < hi; ++i) {
        const double x = a[i];
        int64_t j = i;
        for (; j > lo && a[j - 1] > x; --j) a[j] = a[j - 1];
        a[j] = x;
      }
      return;
    }
    const int64_t c = partition_below(a, lo, hi, pivot);
    if (c >= k) {
      hi = c;
    } else {
      lo = c;
      if (element) {  // the values equal to the pivot next: at least one, so the range shrinks
        const int64_t e = partition_below(a, lo, hi, std::nextafter(pivot, std::numeric_limits<double>::infinity()));
        if (e >= k) return;
        lo = e;
      }
    }
    if (lo >= k || hi == k) return;
    pivot = median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
    element = true;
  }
}

constexpr double kMargin = 1 + 1e-9;  // over the rounding (~1e-15 relative) of distances and their sums

// Mean distance of tree points qb..qe-1 to their k nearest, into res[0 .. qe - qb).
void query_range(const Query& t, int k, int64_t leaf, int64_t qb, int64_t qe, double* res) {
  std::vector<double> hbuf(static_cast<size_t>(k)), buf(static_cast<size_t>(leaf));
  std::vector<Candidate> cand;
  std::vector<double> near;
  KHeap heap{hbuf.data(), k};
  double prev[3] = {0, 0, 0}, prev_kth = -1;  // < 0: no previous query in this range
  // Fills the heap with a bound on query j's k-th squared distance: the previous one's plus their separation.
  auto seed_bound = [&](double qx, double qy, double qz) {
    double bound = std::numeric_limits<double>::infinity();
    if (prev_kth >= 0) {
      const double dx = qx - prev[0], dy = qy - prev[1], dz = qz - prev[2];
      const double r = (prev_kth + std::sqrt(dx * dx + dy * dy + dz * dz)) * kMargin;
      bound = std::max(r * r, 1e-280);  // clear of subnormals, where relative margins stop holding
    }
    return bound;
  };
  auto seed = [&](double qx, double qy, double qz) { heap.fill(seed_bound(qx, qy, qz)); };
  auto finish = [&](int64_t j, double qx, double qy, double qz) {
    double sum = 0, kth = 0;
    for (int i = 0; i < k; ++i) {
      const double d = std::sqrt(hbuf[i]);
      sum += d;
      kth = std::max(kth, d);
    }
    res[j - qb] = sum / static_cast<double>(k);
    prev[0] = qx, prev[1] = qy, prev[2] = qz;
    prev_kth = kth;
  };
  int64_t j = qb;
  while (j < qe) {
    int64_t node, b, e;
    locate(t, j, node, b, e);
    const int64_t je = std::min(e, qe);
    // The leaf's first query walks the tree...
    const double x0 = t.X[j], y0 = t.Y[j], z0 = t.Z[j];
    seed(x0, y0, z0);
    scan_leaf(t, b, e, x0, y0, z0, heap, buf.data());
    walk(t, node, x0, y0, z0, heap, buf.data());
    finish(j, x0, y0, z0);
    if (je - j == 1) {
      j = je;
      continue;
    }
    // ... the others scan the leaves it shows them: a neighbour p of query q in this leaf has
    // |p - q| <= kth(q) <= kth(first) + |q - first|, so p's leaf box is that close to this leaf's box.
    double dev = 0;
    for (int64_t i = j + 1; i < je; ++i) {
      const double dx = t.X[i] - x0, dy = t.Y[i] - y0, dz = t.Z[i] - z0;
      dev = std::max(dev, dx * dx + dy * dy + dz * dz);
    }
    const double r = std::max((prev_kth + std::sqrt(dev)) * kMargin, 1e-140);
    collect(t, t.boxes + 6 * node, r * r, cand);
    int64_t room = 0;
    for (const Candidate& c : cand) room += c.e - c.b;
    if (static_cast<int64_t>(near.size()) < room) near.resize(static_cast<size_t>(room));
    for (int64_t i = j + 1; i < je; ++i) {
      const double qx = t.X[i], qy = t.Y[i], qz = t.Z[i];
      // every squared distance under the seeded bound, then the k smallest of them
      const double bound = seed_bound(qx, qy, qz);
      int64_t count = 0;
      for (const Candidate& c : cand) {
        if (!(box_distance2(t.boxes + 6 * c.node, qx, qy, qz) < bound)) continue;
        const double *X = t.X + c.b, *Y = t.Y + c.b, *Z = t.Z + c.b;
        const int64_t len = c.e - c.b;
        double* d2 = near.data() + count;
        for (int64_t a = 0; a < len; ++a) {
          const double dx = X[a] - qx, dy = Y[a] - qy, dz = Z[a] - qz;
          d2[a] = dx * dx + dy * dy + dz * dz;
        }
        for (int64_t a = 0; a < len; ++a) {
          near[count] = d2[a];
          count += d2[a] < bound;
        }
      }
      TORCH_CHECK(count >= k, "knn_mean_distance: internal error, ", count, " points within the bound of query ", i);
      select_smallest(near.data(), count, k, prev_kth * prev_kth);
      std::copy(near.begin(), near.begin() + k, hbuf.begin());
      finish(i, qx, qy, qz);
    }
    j = je;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> knn_tree_cpu(const at::Tensor& points, int64_t leaf) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.scalar_type() == at::kDouble,
              "knn_tree: points must be float64 [N, 3], got ", points.sizes(), " ", points.scalar_type());
  TORCH_CHECK(leaf >= 2 && leaf <= 4096, "knn_tree: leaf must be in [2, 4096], got ", leaf);
  const at::Tensor src = points.contiguous();
  const int64_t n = src.size(0);
  TORCH_CHECK(n >= 1, "knn_tree: no points");
  const int D = tree_depth(n, leaf);
  const int64_t M = (int64_t{2} << D) - 1;
  at::Tensor coords = at::empty({3, n}, src.options());
  at::Tensor order = at::empty({n}, src.options().dtype(at::kLong));
  at::Tensor boxes = at::empty({M, 6}, src.options());
  std::vector<Item> items(static_cast<size_t>(n));
  const double* s = src.data_ptr<double>();
  at::parallel_for(0, n, 65536, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) items[j] = Item{{s[3 * j], s[3 * j + 1], s[3 * j + 2]}, j};
  });
  Item* p = items.data();
  double* bx = boxes.data_ptr<double>();
  // The top levels one after the other, then the subtrees below them in parallel.
  const int top_depth = std::min(D, 4);
  std::vector<int64_t> level{0, 0, n};  // (node, b, e) triples of the current depth
  for (int depth = 0; depth < top_depth; ++depth) {
    std::vector<int64_t> next;
    for (size_t i = 0; i < level.size(); i += 3) {
      const int64_t node = level[i], b = level[i + 1], e = level[i + 2];
      const int64_t m = split(p, b, e, bx + 6 * node);
      next.insert(next.end(), {2 * node + 1, b, m, 2 * node + 2, m, e});
    }
    level.swap(next);
  }
  const int64_t subtrees = static_cast<int64_t>(level.size() / 3);
  at::parallel_for(0, subtrees, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) build(p, level[3 * i], top_depth, D, level[3 * i + 1], level[3 * i + 2], bx);
  });
  double* c = coords.data_ptr<double>();
  int64_t* o = order.data_ptr<int64_t>();
  at::parallel_for(0, n, 65536, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      c[j] = p[j].x[0];
      c[n + j] = p[j].x[1];
      c[2 * n + j] = p[j].x[2];
      o[j] = p[j].index;
    }
  });
  return {coords, order, boxes};
}

at::Tensor knn_mean_distance_cpu(const at::Tensor& coords, const at::Tensor& boxes, int64_t leaf, int64_t k,
                                 int64_t begin, int64_t end) {
  TORCH_CHECK(coords.dim() == 2 && coords.size(0) == 3 && coords.scalar_type() == at::kDouble && coords.is_contiguous(),
              "knn_mean_distance: coords must be a contiguous float64 [3, N] (knn_tree's), got ", coords.sizes());
  const int64_t n = coords.size(1);
  TORCH_CHECK(leaf >= 2 && leaf <= 4096, "knn_mean_distance: leaf must be in [2, 4096], got ", leaf);
  TORCH_CHECK(n >= 1 && k >= 1 && k <= n && k <= (int64_t{1} << 30), "knn_mean_distance: k must be in [1, min(N, 2^30)], got ", k,
              " for ", n, " points");
  TORCH_CHECK(0 <= begin && begin <= end && end <= n, "knn_mean_distance: queries [", begin, ", ", end,
              ") outside the ", n, " points");
  const int D = tree_depth(n, leaf);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == (int64_t{2} << D) - 1 && boxes.size(1) == 6 &&
                  boxes.scalar_type() == at::kDouble && boxes.is_contiguous(),
              "knn_mean_distance: boxes must be a contiguous float64 [", (int64_t{2} << D) - 1,
              ", 6] (knn_tree's for this N and leaf), got ", boxes.sizes());
  at::Tensor out = at::empty({end - begin}, coords.options());
  const Query t{coords.data_ptr<double>(), coords.data_ptr<double>() + n, coords.data_ptr<double>() + 2 * n,
                boxes.data_ptr<double>(), n, D};
  double* res = out.data_ptr<double>();
  at::parallel_for(begin, end, 1024, [&](int64_t qb, int64_t qe) {
    query_range(t, static_cast<int>(k), leaf, qb, qe, res + (qb - begin));
  });
  return out;
}

}  // namespace infinidepth
