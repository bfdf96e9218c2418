/* theus.hpp — C++17 interface to theus: RAII states and transactions, regions without
 * designated initializers, span-style buffer views, errors as exceptions.
 *
 * Header-only, over the C API of theus.h (link with libtheus as a C program does).
 *
 * Errors: every call that fails throws theus::error, which carries the status code
 * (code(), a THEUS_E* value) and the detail text (what()). A THEUS_ECONFLICT throws
 * theus::conflict_error, a theus::error that also carries the theus_conflict (conflict():
 * field, region and version of the commit it ran into). Exceptions, not an expected-like
 * result, because a conflict or a schema violation ends the unit of work: the natural
 * reaction is to unwind to the retry loop, and RAII aborts what was open on the way.
 *
 * Ownership: theus::state owns a theus_state (destroyed with it); theus::transaction owns a
 * theus_tx and aborts it in its destructor unless commit() or abort() consumed it. Both are
 * move-only. A transaction must not outlive its state, and is used by one thread at a time
 * (as in C); distinct transactions of one state may run on distinct threads.
 *
 *   theus::state st = theus::state::create(schema_json);
 *   theus::transaction tx = st.begin();
 *   std::vector<float> row(3, 1.0f);
 *   tx.add("w", theus::region{{1, 2}, {0, 3}}, row);   // w[1:2, 0:3] += 1
 *   uint64_t v = tx.commit();                           // throws on conflict / schema
 */
#ifndef THEUS_THEUS_HPP
#define THEUS_THEUS_HPP

#include <theus/theus.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace theus {

/** A failed theus call: code() is its THEUS_E* status, what() the detail text. */
class error : public std::runtime_error {
public:
    error(int code, const std::string &message) : std::runtime_error(message), code_(code) {}
    /** The THEUS_E* status code. */
    int code() const noexcept { return code_; }
    /** theus_strerror(code()): the code's name. */
    const char *code_name() const noexcept { return theus_strerror(code_); }

private:
    int code_;
};

/** THEUS_ECONFLICT: the commit (or read) ran into another commit; conflict() says which. */
class conflict_error : public error {
public:
    conflict_error(const std::string &message, const theus_conflict &c)
        : error(THEUS_ECONFLICT, message), conflict_(c) {}
    const theus_conflict &conflict() const noexcept { return conflict_; }

private:
    theus_conflict conflict_;
};

namespace detail {

/* The message of the calling thread's last failed call (on @st when given), with the
 * code's name in front. */
inline std::string message(int rc, const theus_state *st)
{
    const char *m = st ? theus_state_last_error(st) : theus_last_error_message();
    std::string s = theus_strerror(rc);
    if (m && *m) {
        s += ": ";
        s += m;
    }
    return s;
}

/* Throw for a failed status; nothing for THEUS_OK. */
inline void check(int rc, const theus_state *st)
{
    if (rc == THEUS_OK)
        return;
    std::string msg = message(rc, st);
    theus_conflict c;
    if (rc == THEUS_ECONFLICT && st && theus_last_conflict(st, &c) == THEUS_OK)
        throw conflict_error(msg, c);
    throw error(rc, msg);
}

} // namespace detail

/** A contiguous run of T that theus reads from or writes into (std::span's role: C++17 has
 *  none). Borrowed: it points at the caller's memory and owns nothing. */
template <class T>
class view {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;

    constexpr view() noexcept = default;
    constexpr view(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <std::size_t N>
    constexpr view(T (&a)[N]) noexcept : data_(a), size_(N) {}
    /** Any contiguous container with data() and size() (std::vector, std::array, ...). */
    template <class C, class = std::enable_if_t<std::is_convertible_v<
                           decltype(std::data(std::declval<C &>())), T *>>>
    constexpr view(C &c) noexcept : data_(std::data(c)), size_(std::size(c)) {}
    /** view<T> converts to view<const T>. */
    template <class U, class = std::enable_if_t<std::is_convertible_v<U *, T *>>>
    constexpr view(const view<U> &o) noexcept : data_(o.data()), size_(o.size()) {}

    constexpr T *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T *begin() const noexcept { return data_; }
    constexpr T *end() const noexcept { return data_ + size_; }
    constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }

private:
    T *data_ = nullptr;
    std::size_t size_ = 0;
};

/** A one-element view of a scalar (for 0-d fields: tx.write("step", theus::scalar(n))). */
template <class T>
constexpr view<const T> scalar(const T &v) noexcept
{
    return view<const T>(&v, 1);
}

/** One dimension of a region: [start, stop). */
struct range {
    std::int64_t start;
    std::int64_t stop;
};

/** A hyperrectangle of a field, one range per dimension (no designated initializers):
 *  theus::region{{1, 2}, {0, 3}} is rows [1, 2) and columns [0, 3) of a 2-d field. */
class region {
public:
    /** 0 dimensions (the region of a scalar field). */
    region() noexcept { std::memset(&r_, 0, sizeof r_); }
    region(std::initializer_list<range> dims) : region(dims.begin(), dims.size()) {}
    region(const range *dims, std::size_t ndim) : region()
    {
        if (ndim > THEUS_MAX_DIMS)
            throw error(THEUS_EINVAL, "theus::region: more than THEUS_MAX_DIMS dimensions");
        r_.ndim = static_cast<int>(ndim);
        for (std::size_t i = 0; i < ndim; i++) {
            r_.start[i] = dims[i].start;
            r_.stop[i] = dims[i].stop;
        }
    }
    /** From a C region (copied). */
    explicit region(const theus_region &r) noexcept : r_(r) {}
    /** A 1-d region [start, stop). */
    static region span1(std::int64_t start, std::int64_t stop) { return region{{start, stop}}; }

    int ndim() const noexcept { return r_.ndim; }
    range dim(int i) const
    {
        if (i < 0 || i >= r_.ndim)
            throw error(THEUS_EINVAL, "theus::region::dim: no dimension " + std::to_string(i));
        return range{r_.start[i], r_.stop[i]};
    }
    /** Elements in the region (0 when a range is empty or reversed). */
    std::int64_t elements() const noexcept
    {
        std::int64_t n = 1;
        for (int i = 0; i < r_.ndim; i++)
            n *= r_.stop[i] > r_.start[i] ? r_.stop[i] - r_.start[i] : 0;
        return n;
    }
    const theus_region *c_region() const noexcept { return &r_; }

private:
    theus_region r_;
};

class state;

/** A transaction: begun by state::begin(), consumed by commit() or abort(); the destructor
 *  aborts one that is still open. Move-only. */
class transaction {
public:
    transaction() noexcept = default;
    /** Adopt a C transaction of @p st (this object then owns it). */
    transaction(theus_tx *tx, theus_state *st) noexcept : tx_(tx), st_(st) {}
    transaction(const transaction &) = delete;
    transaction &operator=(const transaction &) = delete;
    transaction(transaction &&o) noexcept : tx_(std::exchange(o.tx_, nullptr)), st_(o.st_) {}
    transaction &operator=(transaction &&o) noexcept
    {
        if (this != &o) {
            abort();
            tx_ = std::exchange(o.tx_, nullptr);
            st_ = o.st_;
        }
        return *this;
    }
    ~transaction() { abort(); }

    /** Whether the transaction is still open (not committed, aborted or moved from). */
    bool active() const noexcept { return tx_ != nullptr; }
    explicit operator bool() const noexcept { return active(); }
    /** The version it began at. */
    std::uint64_t base() const { return theus_tx_base(open("base")); }

    /** Read a field (or a region of it) into @p dst, whose size must match the region's
     *  bytes. Throws theus::error (THEUS_EINVAL for a size mismatch), conflict_error. */
    template <class C>
    void read(const std::string &field, C &&dst, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_view(dst);
        io(THEUS_OP_ASSIGN, 'r', field, nullptr, v.data(), v.size_bytes(), mem);
    }
    template <class C>
    void read(const std::string &field, const region &r, C &&dst, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_view(dst);
        io(THEUS_OP_ASSIGN, 'r', field, &r, v.data(), v.size_bytes(), mem);
    }
    /** Read into a new vector of the region's (or the field's) element count. */
    template <class T>
    std::vector<T> read_vector(const std::string &field)
    {
        std::vector<T> out(elements(field, nullptr, sizeof(T)));
        read(field, out);
        return out;
    }
    template <class T>
    std::vector<T> read_vector(const std::string &field, const region &r)
    {
        std::vector<T> out(elements(field, &r, sizeof(T)));
        read(field, r, out);
        return out;
    }

    /** Stage an ASSIGN of @p src (copied now) to a field or a region of it. */
    template <class C>
    void write(const std::string &field, const C &src, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_cview(src);
        io(THEUS_OP_ASSIGN, 'w', field, nullptr, const_cast<void *>(static_cast<const void *>(v.data())),
           v.size_bytes(), mem);
    }
    template <class C>
    void write(const std::string &field, const region &r, const C &src, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_cview(src);
        io(THEUS_OP_ASSIGN, 'w', field, &r, const_cast<void *>(static_cast<const void *>(v.data())),
           v.size_bytes(), mem);
    }
    /** Stage an ADD of @p src (copied now): element-wise sum at commit; ADDs never conflict. */
    template <class C>
    void add(const std::string &field, const C &src, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_cview(src);
        io(THEUS_OP_ADD, 'w', field, nullptr, const_cast<void *>(static_cast<const void *>(v.data())),
           v.size_bytes(), mem);
    }
    template <class C>
    void add(const std::string &field, const region &r, const C &src, theus_mem mem = THEUS_MEM_HOST)
    {
        auto v = as_cview(src);
        io(THEUS_OP_ADD, 'w', field, &r, const_cast<void *>(static_cast<const void *>(v.data())),
           v.size_bytes(), mem);
    }

    /** Commit; returns the version it made. Consumes the transaction whatever happens (as
     *  in C): afterwards active() is false. Throws conflict_error, or theus::error
     *  (THEUS_ESCHEMA for a constraint, ...). */
    std::uint64_t commit()
    {
        theus_tx *tx = open("commit");
        tx_ = nullptr;
        std::uint64_t v = 0;
        detail::check(theus_tx_commit(tx, &v), st_);
        return v;
    }
    /** Abort (nothing happens when it is not open). */
    void abort() noexcept
    {
        if (tx_)
            theus_tx_abort(std::exchange(tx_, nullptr));
    }

    /** The C handle (still owned by this object). */
    theus_tx *get() const noexcept { return tx_; }
    /** Give up ownership of the C handle. */
    theus_tx *release() noexcept { return std::exchange(tx_, nullptr); }

private:
    theus_tx *tx_ = nullptr;
    theus_state *st_ = nullptr;

    theus_tx *open(const char *what) const
    {
        if (!tx_)
            throw error(THEUS_EINVAL, std::string("theus::transaction::") + what +
                                          ": the transaction is not open (committed, aborted "
                                          "or moved from)");
        return tx_;
    }
    template <class C>
    static auto as_view(C &&c)
    {
        using T = std::remove_pointer_t<decltype(std::data(c))>;
        return view<T>(std::data(c), std::size(c));
    }
    template <class C>
    static auto as_cview(const C &c)
    {
        using T = std::remove_pointer_t<decltype(std::data(c))>;
        return view<const T>(std::data(c), std::size(c));
    }
    /* Bytes a region (nullptr: the whole field) of @field holds; throws for an unknown field. */
    std::size_t region_bytes(const std::string &field, const region *r) const
    {
        theus_field_info fi;
        detail::check(theus_state_field_info(st_, field.c_str(), &fi), st_);
        std::int64_t n = 1;
        if (r) {
            n = r->elements();
        } else {
            for (int i = 0; i < fi.ndim; i++)
                n *= fi.shape[i];
        }
        return static_cast<std::size_t>(n) * theus_dtype_size(fi.dtype);
    }
    std::size_t elements(const std::string &field, const region *r, std::size_t esize) const
    {
        open("read_vector");
        return (region_bytes(field, r) + esize - 1) / esize;
    }
    void io(theus_delta_op op, char dir, const std::string &field, const region *r, void *buf,
            std::size_t bytes, theus_mem mem)
    {
        theus_tx *tx = open(dir == 'r' ? "read" : op == THEUS_OP_ADD ? "add" : "write");
        std::size_t want = region_bytes(field, r);
        if (bytes != want)
            throw error(THEUS_EINVAL, "theus::transaction: field '" + field + "': the buffer holds " +
                                          std::to_string(bytes) + " bytes, the region " +
                                          std::to_string(want));
        const theus_region *cr = r ? r->c_region() : nullptr;
        int rc = dir == 'r'              ? theus_tx_read(tx, field.c_str(), cr, buf, mem)
                 : op == THEUS_OP_ADD ? theus_tx_add(tx, field.c_str(), cr, buf, mem)
                                      : theus_tx_write(tx, field.c_str(), cr, buf, mem);
        detail::check(rc, st_);
    }
};

/** A state (owns its theus_state). Move-only. */
class state {
public:
    /** Create from JSON schema text; throws theus::error (THEUS_ESCHEMA with the JSON path,
     *  line and column in what()). */
    static state create(const std::string &schema_json, const theus_state_options *opts = nullptr)
    {
        theus_state *st = nullptr;
        detail::check(theus_state_create(schema_json.c_str(), opts, &st), nullptr);
        return state(st);
    }
    /** Create from a schema file. */
    static state from_file(const std::string &schema_path, const theus_state_options *opts = nullptr)
    {
        theus_state *st = nullptr;
        detail::check(theus_state_create_from_file(schema_path.c_str(), opts, &st), nullptr);
        return state(st);
    }

    state() noexcept = default;
    /** Adopt a C state (this object then destroys it). */
    explicit state(theus_state *st) noexcept : st_(st) {}
    state(const state &) = delete;
    state &operator=(const state &) = delete;
    state(state &&o) noexcept : st_(std::exchange(o.st_, nullptr)) {}
    state &operator=(state &&o) noexcept
    {
        if (this != &o) {
            reset();
            st_ = std::exchange(o.st_, nullptr);
        }
        return *this;
    }
    ~state() { reset(); }

    explicit operator bool() const noexcept { return st_ != nullptr; }
    std::uint64_t version() const noexcept { return theus_state_version(st_); }
    theus_field_info field_info(const std::string &field) const
    {
        theus_field_info fi;
        detail::check(theus_state_field_info(st_, field.c_str(), &fi), st_);
        return fi;
    }
    /** Begin a transaction at the current version. */
    transaction begin(const theus_tx_options *opts = nullptr)
    {
        theus_tx *tx = nullptr;
        detail::check(theus_tx_begin(st_, opts, &tx), st_);
        return transaction(tx, st_);
    }

    theus_state *get() const noexcept { return st_; }
    theus_state *release() noexcept { return std::exchange(st_, nullptr); }
    void reset() noexcept
    {
        if (st_)
            theus_state_destroy(std::exchange(st_, nullptr));
    }

private:
    theus_state *st_ = nullptr;
};

} // namespace theus

#endif
