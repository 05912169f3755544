"""Supernodal multifrontal sparse Cholesky with selected inversion, in numpy/scipy only.

Why our own: scipy ships no sparse Cholesky (SuperLU is a general LU; on a 60k alignment matrix it ran past
10 minutes and 16 GB), and CHOLMOD (scikit-sparse) is only an sdist needing a system SuiteSparse. The
alignment matrix is made of dense label blocks (a sensor's parameters share one sparsity pattern), so a
supernodal factorisation spends almost all its time in dense BLAS-3 kernels and the Python overhead is one
loop iteration per *supernode* (a few hundred), never per column or record.

Steps
1. supervariables: columns with identical pattern are merged (exact integer hash of the row set) into the
   nodes of a compressed graph (one node per sensor block);
2. nested dissection of the compressed graph with spectral separators: the nodes are sorted by each of the
   two lowest non-trivial eigenvectors of the graph Laplacian (ARPACK, or dense LAPACK for small
   subgraphs), every split point of that order is scored at once (separator weight / √(weight A · weight B),
   both sides ≥ 10 % of the weight), the separator is the boundary of one side, minus the nodes that have
   no neighbour in the rest of that side; BFS level sets are the fallback. On the barrel alignment
   matrices this needs ~5x fewer flops than the BFS level-set dissection used before (20k parameters:
   8 GF instead of 48 GF, nnz(L) 11M instead of 32M). The dissection tree *is* the supernode tree:
   every separator, and every leaf subdomain of ≤ ``leaf`` nodes, is one supernode, eliminated as a dense
   block (relaxed supernodes: the few explicit zeros cost far less than finer supernodes' overhead);
3. symbolic factorisation on the compressed graph: the row structure of a supernode is the union of its
   columns' adjacency and its children's row structures, beyond its own columns;
4. numeric multifrontal factorisation: per supernode a panel [L11; L21] and an update matrix U are
   assembled from A and the children's update matrices (extend-add through flat index maps, ``np.add.at``
   on contiguous data; work buffers come from a pool, since first touches of fresh memory are slow),
   then LAPACK potrf, BLAS trsm and syrk (in place) give L11, L21 and U = −L21 L21ᵀ + the children's
   contributions, passed to the parent. The symbolic part (steps 1-3) is reused when the next matrix has
   exactly the same pattern (the passes of one fit);
5. triangular solves per supernode, all right-hand sides at once;
6. selected inversion (Takahashi recurrences, supernodal form) for diag(A⁻¹): for supernode J with rows R
   and Lh = L21 L11⁻¹, Z_RJ = −Z_RR Lh and Z_JJ = (L11 L11ᵀ)⁻¹ + Lhᵀ Z_RR Lh, where Z_RR (lower triangle)
   is gathered from the already computed panels of the ancestors (``np.take``, columns first; BLAS
   trsm/symm/gemm, LAPACK potri, into reused buffers; only the lower trapezoid of Lhᵀ Z_RR Lh is formed for
   large supernodes). Cost is about twice the factorisation's flops (20k parameters: 30 GF against 15 GF;
   2r²k for Z_RR Lh against r²k for the update matrix), whereas diag(A⁻¹) by n solves would cost n·nnz(L)
   and the dense inverse would need n² memory (29 GB at 60k parameters).

Steps 4 and 6 run on up to TREE_THREADS worker threads: a supernode is ready when its children (step 4) or
its parent (step 6) are done, and ready supernodes are independent, so two threads with single-threaded,
GIL-free BLAS (:mod:`b2luca.alignment._tree_blas`) share the large fronts near the root, with the same bits
for any number of threads (60k parameters: 0.57-0.60 of the one-thread time by a flop-count simulation of the
schedule; measured 11.2 CPU-s factorisation in 6.9 s and 12.3 CPU-s inversion in 6.8 s on a partly busy
2-core machine). OpenBLAS's own threads were tried instead and made a busy machine 3-14x slower (idle
threads spinning).

Only lower triangles are ever read; upper triangles of the dense blocks may hold stale values.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import scipy.linalg as la
import scipy.linalg.blas as blas
import scipy.sparse as sp
import scipy.sparse.csgraph as csg
import scipy.sparse.linalg as spla

from ._arrays import unique_ints
from ._tree_blas import (
    one_blas_thread,
    potrf_lower,
    potri_lower,
    run_tree,
    symm_left_lower,
    syrk_lower_update,
    trsm_right_lower,
)

__all__ = ["SupernodalCholesky", "NotPositiveDefinite", "nested_dissection"]


class NotPositiveDefinite(np.linalg.LinAlgError):
    """The matrix is not (numerically) positive definite."""

    def __init__(self, msg: str, column: int = -1):
        super().__init__(msg)
        self.column = column


# ---------------------------------------------------------------------------------------- ordering


def _supervariables(A: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Group index of every column (columns with identical pattern share one), and the first column of
    every group. The diagonal must be structurally present (it is for a positive definite matrix).

    The pattern of a row is hashed by its length and a sum of random 64-bit integers over its columns
    (wrap-around integer addition is exact, so the hash does not depend on the order of the indices).
    """
    n = A.shape[0]
    rnd = np.random.default_rng(12345).integers(0, np.iinfo(np.int64).max, size=n, dtype=np.int64)
    ip = A.indptr
    h = np.zeros((2, n), np.uint64)
    h[0] = np.add.reduceat(rnd.view(np.uint64)[A.indices], ip[:-1])  # every row holds its diagonal
    h[1] = np.diff(ip)
    _, first, grp = np.unique(h.T, axis=0, return_index=True, return_inverse=True)
    # number the groups by their first column (keeps the original order of the blocks)
    o = np.argsort(first, kind="stable")
    relabel = np.empty(o.size, np.int64)
    relabel[o] = np.arange(o.size)
    return relabel[grp.ravel()], first[o]


def _level_separator(sub: sp.csr_matrix, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(part A, part B, separator) index arrays of a connected graph from BFS level sets (None: too small)."""
    d = csg.shortest_path(sub, unweighted=True, directed=False, indices=0)
    u = int(np.argmax(d))
    d = csg.shortest_path(sub, unweighted=True, directed=False, indices=u)
    lev = d.astype(np.int64)
    nlev = int(lev.max()) + 1
    if nlev < 3:
        return None
    wl = np.bincount(lev, weights=w, minlength=nlev)
    cum = np.cumsum(wl)
    tot = cum[-1]
    ks = np.arange(1, nlev - 1)
    before = cum[ks - 1]
    after = tot - cum[ks]
    bal = np.minimum(before, after) / tot
    good = bal >= 0.2
    if good.any():
        cand = ks[good]
        k = int(cand[np.argmin(wl[cand] + 1e-9 * np.abs(before[good] - after[good]))])
    else:
        k = int(ks[np.argmax(bal)])
    # separator: the nodes of level k with a neighbour in level k+1
    rows = np.repeat(np.arange(lev.size), np.diff(sub.indptr))
    touch = np.zeros(lev.size, bool)
    m = (lev[rows] == k) & (lev[sub.indices] == k + 1)
    touch[rows[m]] = True
    part_a = (lev < k) | ((lev == k) & ~touch)
    part_b = lev > k
    return np.flatnonzero(part_a), np.flatnonzero(part_b), np.flatnonzero(touch)


#: subgraphs up to this many nodes get their Fiedler vector from a dense eigensolver
_DENSE_FIEDLER = 200
_FIEDLER_TOL = 1e-2
#: number of low Laplacian modes tried as sweep directions
_NVEC = 2
#: split score: separator weight / (weight A · weight B) ** _SCORE_POW
_SCORE_POW = 0.5
#: least weight fraction on either side of a spectral split
_BALANCE = 0.1


def _fiedler(sub: sp.csr_matrix, nvec: int) -> np.ndarray | None:
    """The Fiedler vector and the next ``nvec - 1`` low modes of the (normalised) Laplacian of a connected
    graph, as columns (None if ARPACK fails)."""
    m = sub.shape[0]
    nvec = max(1, min(nvec, m - 2))
    deg = np.diff(sub.indptr).astype(np.float64)
    if m <= _DENSE_FIEDLER:
        lap = np.diag(deg)
        lap[np.repeat(np.arange(m), np.diff(sub.indptr)), sub.indices] -= 1.0
        _, v = la.eigh(lap, subset_by_index=[1, nvec], driver="evr", check_finite=False)
        return v
    dih = 1.0 / np.sqrt(deg)
    nadj = sp.csr_matrix((dih[np.repeat(np.arange(m), np.diff(sub.indptr))] * dih[sub.indices], sub.indices,
                          sub.indptr), shape=(m, m))
    # the top eigenvector of D^-1/2 A D^-1/2 is sqrt(deg) (eigenvalue 1); the next ones are the low modes
    v0 = np.sqrt(deg) * (1.0 + 0.1 * np.cos(np.arange(m) * 0.618))
    try:
        val, vec = spla.eigsh(nadj, k=nvec + 1, which="LA", tol=_FIEDLER_TOL, ncv=min(m - 1, 16 + 2 * nvec),
                              v0=v0)
    except spla.ArpackError:
        return None
    o = np.argsort(val)[::-1][1:]
    return vec[:, o] * dih[:, None]


def _sweep(sub: sp.csr_matrix, w: np.ndarray, f: np.ndarray,
           rows: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """Best vertex separator among the splits of the nodes sorted by ``f``: (score, A, B, S) or None.

    Every split point with both sides holding at least ``_BALANCE`` of the weight is scored at once; the
    separator is the boundary of either side (its nodes with no neighbour in the rest of their side move
    to the other side), and the split with the smallest separator weight / (weight A · weight B)^p wins
    (p = ``_SCORE_POW``).
    """
    m = sub.shape[0]
    o = np.argsort(f, kind="stable")
    pos = np.empty(m, np.int64)
    pos[o] = np.arange(m)
    npos = pos[sub.indices]
    maxp = np.full(m, -1, np.int64)
    minp = np.full(m, m, np.int64)
    np.maximum.at(maxp, rows, npos)
    np.minimum.at(minp, rows, npos)
    # boundary weights for the split "positions <= c | > c", all c at once (difference arrays)
    wa_b = np.zeros(m + 1)
    sel = maxp > pos
    np.add.at(wa_b, pos[sel], w[sel])
    np.add.at(wa_b, maxp[sel], -w[sel])
    wb_b = np.zeros(m + 1)
    sel = minp < pos
    np.add.at(wb_b, minp[sel], w[sel])
    np.add.at(wb_b, pos[sel], -w[sel])
    sep_a = np.cumsum(wa_b)[: m - 1]
    sep_b = np.cumsum(wb_b)[: m - 1]
    cw = np.cumsum(w[o])[: m - 1]
    tot = float(w.sum())
    ok = (np.minimum(cw, tot - cw) >= _BALANCE * tot)
    if not ok.any():
        ok = np.ones(m - 1, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        sa = np.where(ok, sep_a / ((cw - sep_a) * (tot - cw)) ** _SCORE_POW, np.inf)
        sb = np.where(ok, sep_b / (cw * (tot - cw - sep_b)) ** _SCORE_POW, np.inf)
    sa[~np.isfinite(sa) | (sa < 0)] = np.inf
    sb[~np.isfinite(sb) | (sb < 0)] = np.inf
    ca, cb = int(np.argmin(sa)), int(np.argmin(sb))
    if not np.isfinite(min(sa[ca], sb[cb])):
        return None
    if sa[ca] <= sb[cb]:
        side = pos <= ca  # the separator is this side's boundary
        sep = side & (maxp > ca)
    else:
        side = pos > cb
        sep = side & (minp <= cb)
    inner = side & ~sep
    has = np.zeros(m, bool)
    has[rows[inner[sub.indices]]] = True
    a = inner
    b = ~side | (sep & ~has)
    sep &= has
    wa, wb = float(w[a].sum()), float(w[b].sum())
    if wa == 0 or wb == 0:
        return None
    return float(w[sep].sum()) / (wa * wb) ** _SCORE_POW, o[a[o]], o[b[o]], o[sep[o]]


def _spectral_separator(sub: sp.csr_matrix, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(part A, part B, separator) of a connected graph from sweeps of its low Laplacian modes (the best
    of the ``_NVEC`` lowest); index arrays in the order of the winning mode."""
    m = sub.shape[0]
    if m < 4:
        return None
    F = _fiedler(sub, _NVEC)
    if F is None or not np.all(np.isfinite(F)):
        return None
    rows = np.repeat(np.arange(m), np.diff(sub.indptr))
    best = None
    for i in range(F.shape[1]):
        res = _sweep(sub, w, F[:, i], rows)
        if res is not None and (best is None or res[0] < best[0]):
            best = res
    return None if best is None else best[1:]


def _separator(sub: sp.csr_matrix, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Spectral separator, BFS level sets as the fallback."""
    split = _spectral_separator(sub, w)
    if split is None or split[0].size == 0 or split[1].size == 0:
        split = _level_separator(sub, w)
    return split


def _nd_tree(Q: sp.csr_matrix, weights: np.ndarray, leaf: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Nested dissection tree of graph ``Q``: node sets of the tree nodes in postorder, and their parents.

    Leaves are subdomains of at most ``leaf`` graph nodes; inner tree nodes are separators; the
    components of a disconnected subgraph become siblings.
    """
    Q = sp.csr_matrix(Q)
    loc = np.full(Q.shape[0], -1, np.int64)
    blocks: list[np.ndarray] = []
    parent: list[int] = []
    limit = max(sys.getrecursionlimit() - 200, 100)

    def emit(nodes: np.ndarray, kids: list[int]) -> int:
        i = len(blocks)
        blocks.append(nodes)
        parent.append(-1)
        for c in kids:
            parent[c] = i
        return i

    def rec(nodes: np.ndarray, depth: int) -> list[int]:
        if nodes.size <= leaf or depth > limit:
            return [emit(nodes, [])]
        loc[nodes] = np.arange(nodes.size)
        sub = _subgraph(Q, nodes, loc)
        loc[nodes] = -1
        ncomp, lab = csg.connected_components(sub, directed=False)
        if ncomp > 1:
            # large components recursively; small ones packed together into leaves of <= leaf nodes
            o = np.argsort(lab, kind="stable")
            cnt = np.bincount(lab, minlength=ncomp)
            bounds = np.concatenate([[0], np.cumsum(cnt)])
            roots: list[int] = []
            pack: list[np.ndarray] = []
            npack = 0
            for c in np.argsort(cnt, kind="stable"):
                comp = nodes[o[bounds[c]:bounds[c + 1]]]
                if comp.size > leaf:
                    roots += rec(comp, depth + 1)
                    continue
                if npack + comp.size > leaf:
                    roots.append(emit(np.concatenate(pack), []))
                    pack, npack = [], 0
                pack.append(comp)
                npack += comp.size
            if pack:
                roots.append(emit(np.concatenate(pack), []))
            return roots
        split = _separator(sub, weights[nodes])
        if split is None:
            return [emit(nodes, [])]
        part_a, part_b, sep = split
        kids = rec(nodes[part_a], depth + 1) + rec(nodes[part_b], depth + 1)
        return [emit(nodes[sep], kids)]

    if Q.shape[0]:
        rec(np.arange(Q.shape[0]), 0)
    return blocks, np.asarray(parent, np.int64)


def nested_dissection(Q: sp.csr_matrix, weights: np.ndarray, leaf: int = 32) -> np.ndarray:
    """Fill-reducing elimination order of the nodes of graph ``Q`` (symmetric pattern, no diagonal)."""
    blocks, _ = _nd_tree(Q, weights, leaf)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def _subgraph(Q: sp.csr_matrix, nodes: np.ndarray, loc: np.ndarray) -> sp.csr_matrix:
    """Rows ``nodes`` of ``Q`` with the columns renumbered by ``loc`` (−1: dropped) and the diagonal
    dropped, as a square CSR pattern with unit values (``Q`` without duplicates; columns left unsorted)."""
    m = nodes.size
    deg = np.diff(Q.indptr)[nodes]
    idx = _expand(Q.indptr[nodes], deg)
    cols = loc[Q.indices[idx]]
    rows = np.repeat(np.arange(m), deg)
    keep = (cols >= 0) & (cols != rows)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=m), out=indptr[1:])
    return sp.csr_matrix((np.ones(int(indptr[-1])), cols[keep], indptr), shape=(m, m))


def _expand(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of the ranges [starts[i], starts[i] + lens[i])."""
    tot = int(lens.sum())
    if tot == 0:
        return np.zeros(0, np.int64)
    off = np.cumsum(lens) - lens
    return np.repeat(starts - off, lens) + np.arange(tot)


def _gather_block(zt: np.ndarray, rowpos: np.ndarray, colpos: np.ndarray) -> np.ndarray:
    """``zt[rowpos][:, colpos]`` of an F-ordered panel, gathered through its transpose (C order: a column of
    the panel is a contiguous row): whole columns first (a slice when ``colpos`` is contiguous), then the
    rows within them; no flat index array (half the time of one ``take`` through a k x r index map)."""
    ztT = zt.T
    c_lo = int(colpos[0])
    if int(colpos[-1]) - c_lo + 1 == colpos.size:
        cols = ztT[c_lo:c_lo + colpos.size]
    else:
        cols = np.take(ztT, colpos, axis=0)
    return np.take(cols, rowpos, axis=1).T


#: below this many columns the k x k product Lhᵀ W is one full GEMM; above, only its lower trapezoid
_TRAPEZOID_MIN = 192


def _add_lower_product(Z: np.ndarray, Lh: np.ndarray, W: np.ndarray) -> None:
    """Z += Lhᵀ W on (at least) the lower triangle of the k x k matrix Z (the product is symmetric: only its
    lower triangle is ever read). Large k: column blocks of the lower trapezoid only, ~(1 + 1/nb)/2 of the
    flops of the full product."""
    k = Z.shape[0]
    if k < _TRAPEZOID_MIN:
        Z += Lh.T @ W
        return
    nb = min(8, k // (_TRAPEZOID_MIN // 2))
    edges = np.linspace(0, k, nb + 1).astype(np.int64)
    for j0, j1 in zip(edges[:-1], edges[1:]):
        Z[j0:, j0:j1] += Lh[:, j0:].T @ W[:, j0:j1]


# ---------------------------------------------------------------------------------------- factor

#: worker threads for the factorisation and the selected inversion (at most one per core): independent
#: supernodes run side by side with single-threaded BLAS (see :mod:`b2luca.alignment._tree_blas`); the
#: result is the same to the last bit for any number of threads
TREE_THREADS = 2
_TREE_MIN_FLOPS = 2e8  # below: one thread (threads cost more than they save on small matrices)
_POOL_KEEP = 128 << 20  # free work buffers kept, all threads together
_EMPTY = np.empty(0)


class _Pool:
    """Reusable float64 work buffers: touching fresh memory is several times slower than reusing it.

    At most ``keep`` bytes of free buffers are kept (the largest are let go first): the many small fronts
    reuse memory, while the few large ones near the root do not stay resident after use.
    """

    def __init__(self, keep: int = 128 << 20) -> None:
        self.free: list[np.ndarray] = []
        self.keep = keep

    def get(self, size: int) -> np.ndarray:
        """A 1-d buffer of at least ``size`` elements (contents undefined); give it back with ``put``."""
        best = -1
        for i, b in enumerate(self.free):
            if b.size >= size and (best < 0 or b.size < self.free[best].size):
                best = i
        if best >= 0:
            return self.free.pop(best)
        return np.empty(max(size, 1))

    def put(self, buf: np.ndarray) -> None:
        self.free.append(buf)
        total = sum(b.nbytes for b in self.free)
        while total > self.keep and self.free:
            big = max(range(len(self.free)), key=lambda i: self.free[i].size)
            total -= self.free.pop(big).nbytes


def _fview(buf: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The first rows*cols elements of ``buf`` as a Fortran-ordered matrix."""
    return buf[: rows * cols].reshape((rows, cols), order="F")


class _Analysis:
    """The symbolic factorisation: permutation, supernodes (column ranges, rows, tree), sizes."""

    def __init__(self, A: sp.csr_matrix, leaf: int):
        n = A.shape[0]
        # 1. supervariables and compressed graph (from the first row of every group)
        if n:
            sv, rep = _supervariables(A)
        else:
            sv, rep = np.zeros(0, np.int64), np.zeros(0, np.int64)
        ns = rep.size
        size = np.bincount(sv, minlength=ns)
        loc = np.full(n, -1, np.int64)
        loc[rep] = np.arange(ns)
        Qc = _subgraph(A, rep, loc)  # the representatives' rows and columns
        # 2. nested dissection tree = supernode tree (postorder)
        blocks, sn_parent = _nd_tree(Qc, size.astype(np.float64), leaf)
        nsn = len(blocks)
        order = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        rank = np.empty(ns, np.int64)
        rank[order] = np.arange(ns)
        nsize = size[order]
        node_start = np.zeros(ns + 1, np.int64)
        np.cumsum(nsize, out=node_start[1:])
        bl = np.array([b.size for b in blocks], np.int64)
        b_end = np.cumsum(bl)
        b_start = b_end - bl
        self.perm = np.argsort(rank[sv], kind="stable")
        self.c0 = node_start[b_start]
        self.c1 = node_start[b_end]
        self.sn_parent = sn_parent
        # 3. symbolic: row structures on the compressed graph (node ranks), then in variables
        Qp = Qc[order][:, order].tocsr()
        Qp.sort_indices()
        ip, ix = Qp.indptr, Qp.indices
        kids: list[list[int]] = [[] for _ in range(nsn)]
        for s in range(nsn):
            if sn_parent[s] >= 0:
                kids[int(sn_parent[s])].append(s)
        self.kids = kids
        rnodes: list[np.ndarray] = [None] * nsn  # type: ignore[list-item]
        self.rows: list[np.ndarray] = []
        for s in range(nsn):
            e = int(b_end[s])
            adj = ix[ip[b_start[s]]:ip[e]]
            parts = [adj[adj >= e]] + [r[r >= e] for r in (rnodes[c] for c in kids[s])]
            for c in kids[s]:  # dissection invariant: a child's rows lie in this front (else: a bug)
                rc = rnodes[c]
                if np.any(rc[rc < e] < b_start[s]):
                    raise RuntimeError(f"invalid dissection tree at supernode {s}")
            rn = unique_ints(np.concatenate(parts), stable=False)
            rnodes[s] = rn
            self.rows.append(_expand(node_start[rn], nsize[rn]))
        self.nsuper = nsn
        k = self.c1 - self.c0
        r = np.array([x.size for x in self.rows], np.int64)
        self.nnz_L = int((k * (k + 1) // 2 + k * r).sum())
        self.flops = float((k.astype(float) ** 3 / 3 + k.astype(float) ** 2 * r + k * r.astype(float) ** 2).sum())


#: the last analysis with the pattern it belongs to (the passes of one fit share the pattern)
_last_analysis: list[tuple[int, np.ndarray, np.ndarray, _Analysis]] = []


def _analyse(A: sp.csr_matrix, leaf: int, reuse: bool) -> _Analysis:
    """The symbolic factorisation of A, reused when the previous call had exactly the same pattern."""
    if reuse and _last_analysis:
        lf, ip, ix, an = _last_analysis[0]
        if lf == leaf and np.array_equal(ip, A.indptr) and np.array_equal(ix, A.indices):
            return an
    an = _Analysis(A, leaf)
    _last_analysis[:] = [(leaf, A.indptr.copy(), A.indices.copy(), an)]
    return an


class SupernodalCholesky:
    """A = L Lᵀ for a symmetric positive definite sparse ``A`` (both triangles stored, symmetric pattern).

    ``leaf``: largest subdomain (in supervariables) that nested dissection does not split further.
    ``reuse_analysis``: take the symbolic factorisation (ordering, supernodes) of the previous
    factorisation if its matrix had exactly the same sparsity pattern (as in the passes of one fit).
    ``threads``: worker threads of the factorisation and of :meth:`diag_inverse` (0: up to TREE_THREADS, one
    per core, for large matrices); the result does not depend on it.
    Attributes: ``nsuper`` supernodes, ``nnz_L`` stored entries of L (lower triangles of the diagonal
    blocks included), ``flops`` of the numeric factorisation, ``perm`` the elimination order.
    """

    def __init__(self, A: sp.spmatrix, leaf: int = 32, reuse_analysis: bool = True, threads: int = 0):
        self.threads = threads
        self.released = False  # diag_inverse(release=True) let go of the factor
        A = sp.csr_matrix(A, dtype=np.float64)
        n = A.shape[0]
        self.n = n
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()
        if np.any(A.data == 0):  # explicit zeros would only blur the block structure
            A = A.copy()
            A.eliminate_zeros()
        dg = A.diagonal()
        if np.any(~(dg > 0)):
            j = int(np.flatnonzero(~(dg > 0))[0])
            raise NotPositiveDefinite(f"matrix not positive definite (diagonal element {j} is {dg[j]})", column=j)
        an = _analyse(A, leaf, reuse_analysis)
        self.perm, self.c0, self.c1, self.rows = an.perm, an.c0, an.c1, an.rows
        self.sn_parent, self.kids, self.nsuper = an.sn_parent, an.kids, an.nsuper
        self.nnz_L, self.flops = an.nnz_L, an.flops
        self._factor(A)

    # ---------------------------------------------------------------------------------- numeric
    def _factor(self, A: sp.csr_matrix) -> None:
        n = self.n
        inv = np.empty(n, np.int64)
        inv[self.perm] = np.arange(n)
        aip, aix, adv = A.indptr, A.indices, A.data
        alen = np.diff(aip)
        upd: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # update matrices of the done supernodes
        nt = self._threads()
        self.L11: list[np.ndarray] = [None] * self.nsuper  # type: ignore[list-item]
        self.L21: list[np.ndarray] = [None] * self.nsuper  # type: ignore[list-item]

        def front(s: int, ctx: dict) -> None:  # one supernode (any thread: its children are done)
            if not ctx:
                ctx["posmap"] = np.zeros(n, np.int64)
                ctx["pool"] = _Pool(_POOL_KEEP // nt)
            posmap, pool = ctx["posmap"], ctx["pool"]
            c0, c1, R = int(self.c0[s]), int(self.c1[s]), self.rows[s]
            k = c1 - c0
            r = R.size
            f = k + r
            posmap[c0:c1] = np.arange(k)
            posmap[R] = np.arange(k, f)
            Pbuf = pool.get(f * k)
            Pf = Pbuf[: f * k]
            Pf.fill(0.0)
            P = _fview(Pbuf, f, k)  # panel [A11; A21] (lower; the upper part of A11 too)
            # the supernode's columns of A = its rows (A symmetric), entries at or below row c0
            src = self.perm[c0:c1]
            idx = _expand(aip[src], alen[src])
            ii = inv[aix[idx]]
            keep = ii >= c0
            lc = np.repeat(np.arange(k), alen[src])[keep]
            Pf[lc * f + posmap[ii[keep]]] = adv[idx[keep]]
            Ub = None
            if r and self.sn_parent[s] >= 0:
                Ubuf = pool.get(r * r + 1)
                Ub = Ubuf[: r * r + 1]  # last slot: sink for junk
                Ub.fill(0.0)
            for c in self.kids[s]:
                Uc, cbuf = upd.pop(c)
                pm = posmap[self.rows[c]]
                rc = pm.size
                nb = int(np.searchsorted(pm, k))
                Ucf = Uc.reshape(-1, order="F")
                # flat F-order targets, laid out like Uc's columns (C order of the transposed map)
                if nb:
                    np.add.at(Pf, (pm[:nb, None] * f + pm[None, :]).ravel(), Ucf[: rc * nb])
                if nb < rc:
                    q = pm - k
                    lin = q[nb:, None] * r + q[None, :]
                    lin[:, :nb] = r * r  # rows above the block: upper triangle, to the sink
                    assert Ub is not None  # a child's rows below the block: this supernode has a parent
                    np.add.at(Ub, lin.ravel(), Ucf[rc * nb:])
                pool.put(cbuf)
            L11, info = potrf_lower(P[:k])  # a copy: P is reused
            if info != 0:
                raise NotPositiveDefinite(
                    f"matrix not positive definite (supernode {s}, columns {c0}..{c1 - 1} of the "
                    f"permuted matrix)", column=int(self.perm[c0 + max(info, 1) - 1]))
            if r:
                L21 = np.array(P[k:], order="F")
                trsm_right_lower(L11, L21, trans=True)  # A21 L11⁻ᵀ
                if Ub is not None:
                    U = _fview(Ub, r, r)
                    syrk_lower_update(U, L21, -1.0, 1.0)
                    upd[s] = (U, Ubuf)
            else:
                L21 = np.zeros((0, k), order="F")
            pool.put(Pbuf)
            self.L11[s] = L11
            self.L21[s] = L21

        # bottom-up: a supernode waits for its children; the lowest ready one first (postorder: the fronts of
        # one path to the root alive at a time per thread)
        parent = self.sn_parent
        with one_blas_thread():
            run_tree(self.nsuper, [len(c) for c in self.kids], [[int(p)] if p >= 0 else [] for p in parent],
                     key=lambda s: s, work=front, threads=nt)

    def _threads(self) -> int:
        """Worker threads for the factorisation and the selected inversion: ``threads``, else up to
        TREE_THREADS (one per core) when the work is large enough to pay for them."""
        if self.threads > 0:
            return self.threads
        if self.flops < _TREE_MIN_FLOPS:
            return 1
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, min(TREE_THREADS, cores))

    def solve(self, b: np.ndarray) -> np.ndarray:
        """x = A⁻¹ b (b: (n,) or (n, k)); all columns at once, per supernode BLAS.

        The per-supernode calls are small: BLAS runs single-threaded here (its thread start-up made the
        20k solve 6x slower with 2 threads).
        """
        with one_blas_thread():
            return self._solve(b)

    def _solve(self, b: np.ndarray) -> np.ndarray:
        if self.released:
            raise RuntimeError("the factor was released by diag_inverse(release=True)")
        b = np.asarray(b, np.float64)
        one = b.ndim == 1
        x = np.asfortranarray((b[:, None] if one else b)[self.perm])
        for s in range(self.nsuper):
            c0, c1, R = self.c0[s], self.c1[s], self.rows[s]
            xs = blas.dtrsm(1.0, self.L11[s], x[c0:c1], lower=1)
            x[c0:c1] = xs
            if R.size:
                x[R] -= self.L21[s] @ xs
        for s in range(self.nsuper - 1, -1, -1):
            c0, c1, R = self.c0[s], self.c1[s], self.rows[s]
            xs = x[c0:c1]
            if R.size:
                xs = xs - self.L21[s].T @ x[R]
            x[c0:c1] = blas.dtrsm(1.0, self.L11[s], xs, lower=1, trans_a=1)
        out = np.empty_like(x)
        out[self.perm] = x
        return out[:, 0] if one else out

    def diag_inverse(self, release: bool = False) -> np.ndarray:
        """diag(A⁻¹) by supernodal selected inversion (see module docstring).

        ``release``: let go of each supernode's part of the factor as soon as it is used (memory: the factor
        shrinks while the panels of the inverse grow); the factor can no longer solve afterwards.
        """
        if self.released:
            raise RuntimeError("the factor was released by diag_inverse(release=True)")
        n = self.n
        d = np.empty(n)
        Zp: list[np.ndarray | None] = [None] * self.nsuper  # [Z_JJ; Z_RJ] panels, F order
        front: list[np.ndarray | None] = [None] * self.nsuper
        snode_of_var = np.repeat(np.arange(self.nsuper), self.c1 - self.c0)
        # the panel of t is read by its descendants only: it is dropped once its whole subtree is done
        # (memory: the panels of the paths to the root being worked on, not all of L's size), and a leaf's
        # panel is never stored
        parent = self.sn_parent
        pending = np.ones(self.nsuper, np.int64)  # supernodes of the subtree not done yet
        for s in range(self.nsuper):
            if parent[s] >= 0:
                pending[parent[s]] += pending[s]  # postorder: children before parents

        def column(s: int, ctx: dict) -> None:  # one supernode (any thread: its ancestors are done)
            c0, c1, R = int(self.c0[s]), int(self.c1[s]), self.rows[s]
            k, r = c1 - c0, R.size
            # work buffers of this thread, reused (fresh memory is slow to touch), grown to the largest front
            # it has met: Z_RR, Lh and Z_RR Lh
            for name, size in (("z", r * r), ("l", r * k), ("w", r * k)):
                if ctx.get(name, _EMPTY).size < size:
                    ctx[name] = None
                    ctx[name] = np.empty(size)
            L11 = self.L11[s]
            Zjj, info = potri_lower(L11)
            if info != 0:
                raise NotPositiveDefinite(f"singular diagonal block in supernode {s}")
            leaf = not self.kids[s]  # nobody reads this panel: only the diagonal of Z_JJ is needed
            if r:
                Zrr = _fview(ctx["z"], r, r)  # lower triangle gathered from the ancestors
                sn = snode_of_var[R]
                brk = np.flatnonzero(np.diff(sn)) + 1
                starts = np.concatenate([[0], brk])
                ends = np.concatenate([brk, [r]])
                for a, b in zip(starts, ends):
                    t = int(sn[a])
                    ft, zt = front[t], Zp[t]
                    assert ft is not None and zt is not None  # ancestors are done first
                    Zrr[a:, a:b] = _gather_block(zt, np.searchsorted(ft, R[a:]), R[a:b] - self.c0[t])
                Lh = _fview(ctx["l"], r, k)
                Lh[...] = self.L21[s]
                trsm_right_lower(L11, Lh, trans=False)  # L21 L11⁻¹
                W = symm_left_lower(Zrr, Lh, _fview(ctx["w"], r, k))  # Z_RR Lh = −Z_RJ
                if leaf:  # diag(Lhᵀ W) without the k x k product
                    d[c0:c1] = np.diag(Zjj) + np.einsum("ij,ij->j", Lh, W)
                else:
                    _add_lower_product(Zjj, Lh, W)
            elif leaf:
                d[c0:c1] = np.diag(Zjj)
            if not leaf:
                Z = np.empty((k + r, k), order="F")
                if r:
                    np.negative(W, out=Z[k:])
                Z[:k] = Zjj
                front[s] = np.concatenate([np.arange(c0, c1), R])
                Zp[s] = Z
                d[c0:c1] = np.diag(Zjj)

        def finished(s: int) -> None:  # under the scheduler's lock
            if release:
                self.L11[s] = self.L21[s] = None  # type: ignore[call-overload]
            t = s
            while t >= 0:
                pending[t] -= 1
                if pending[t] == 0:
                    Zp[t] = front[t] = None
                t = int(parent[t])

        # top-down: a supernode waits for its parent; the highest ready one first (the sequential order)
        self.released = release
        with one_blas_thread():
            run_tree(self.nsuper, [1 if p >= 0 else 0 for p in parent], self.kids, key=lambda s: -s,
                     work=column, threads=self._threads(), done=finished)
        out = np.empty(n)
        out[self.perm] = d
        return out
