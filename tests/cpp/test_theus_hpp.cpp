// The C++ interface (include/theus/theus.hpp): RAII, regions, views, exceptions. A small
// assert-based runner (no C++ test framework needed): each TEST registers itself, main runs
// them all and exits 1 when a check failed. Registered with ctest as test_cpp.
//
// Every public C header is included too: they must compile as C++ (extern "C" guards).
#include <theus/theus.hpp>
#include <theus/theus.h>
#include <theus/theus_dlpack.h>
#include <theus/theus_durable.h>
#include <theus/theus_process.h>
#include <theus/theus_shared.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace {

struct test_case {
    const char *name;
    std::function<void()> body;
};

std::vector<test_case> &registry()
{
    static std::vector<test_case> r;
    return r;
}

struct registrar {
    registrar(const char *name, std::function<void()> body) { registry().push_back({name, std::move(body)}); }
};

int failures = 0;

void check_failed(const char *file, int line, const char *expr)
{
    std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, expr);
    failures++;
}

} // namespace

#define CHECK(e) ((e) ? (void)0 : check_failed(__FILE__, __LINE__, #e))
#define TEST(name)                                 \
    static void test_##name();                     \
    static registrar reg_##name(#name, test_##name); \
    static void test_##name()

/* The call must throw theus::error (or a subclass) with this code. */
#define CHECK_THROWS_CODE(call, want)                                  \
    do {                                                               \
        int got_ = THEUS_OK;                                           \
        try {                                                          \
            call;                                                      \
        } catch (const theus::error &e_) {                             \
            got_ = e_.code();                                          \
            CHECK(std::strlen(e_.what()) > 0);                         \
        }                                                              \
        CHECK(got_ == (want));                                         \
    } while (0)

static const char *const schema =
    "{\"name\": \"cpp\", \"fields\": {"
    "  \"w\":    {\"dtype\": \"f32\", \"shape\": [2, 3], \"constraints\": {\"finite\": true}},"
    "  \"step\": {\"dtype\": \"i64\", \"shape\": []},"
    "  \"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}}}";

TEST(write_read_commit)
{
    theus::state st = theus::state::create(schema);
    CHECK(st.version() == 1);
    theus::transaction tx = st.begin();
    CHECK(tx.active());
    CHECK(tx.base() == 1);
    std::vector<float> w = {1, 2, 3, 4, 5, 6};
    tx.write("w", w);
    tx.add("step", theus::scalar<std::int64_t>(7));
    // Read your own writes, into a std::array through a view.
    std::array<float, 3> row{};
    tx.read("w", theus::region{{1, 2}, {0, 3}}, row);
    CHECK(row[0] == 4 && row[2] == 6);
    CHECK(tx.commit() == 2);
    CHECK(!tx.active());
    CHECK(st.version() == 2);

    theus::transaction rd = st.begin();
    std::vector<float> got = rd.read_vector<float>("w");
    CHECK(got == w);
    std::vector<std::int64_t> step = rd.read_vector<std::int64_t>("step");
    CHECK(step.size() == 1 && step[0] == 7);
    std::vector<float> col = rd.read_vector<float>("w", theus::region{{0, 2}, {1, 2}});
    CHECK(col.size() == 2 && col[0] == 2 && col[1] == 5);
    CHECK(st.field_info("w").version == 2);
}

TEST(destructor_aborts)
{
    theus::state st = theus::state::create(schema);
    {
        theus::transaction tx = st.begin();
        tx.write("w", std::vector<float>(6, 9.0f));
    } // not committed: aborted here
    CHECK(st.version() == 1);
    theus::transaction rd = st.begin();
    std::vector<float> got = rd.read_vector<float>("w");
    CHECK(got == std::vector<float>(6, 0.0f));
}

TEST(moves_and_consumed_transactions)
{
    theus::state st = theus::state::create(schema);
    theus::transaction a = st.begin();
    theus::transaction b = std::move(a);
    CHECK(!a.active() && b.active());
    b.add("step", theus::scalar<std::int64_t>(1));
    b.commit();
    CHECK_THROWS_CODE(b.commit(), THEUS_EINVAL);   // consumed
    CHECK_THROWS_CODE(a.write("step", theus::scalar<std::int64_t>(1)), THEUS_EINVAL);
    theus::state moved = std::move(st);
    CHECK(!st && moved && moved.version() == 2);
    b = moved.begin();   // move-assigning over a consumed one
    CHECK(b.active());
    b.abort();
    CHECK(!b.active());
    b.abort();           // twice is harmless
}

TEST(errors_are_exceptions_with_codes)
{
    CHECK_THROWS_CODE(theus::state::create("{\"name\": 1}"), THEUS_ESCHEMA);
    theus::state st = theus::state::create(schema);
    theus::transaction tx = st.begin();
    float x = 1;
    CHECK_THROWS_CODE(tx.write("nope", theus::scalar(x)), THEUS_ENOENT);
    CHECK_THROWS_CODE(tx.write("seed", theus::scalar<std::uint64_t>(3)), THEUS_EPERM);
    // A buffer of the wrong size is refused before the C call; the transaction goes on.
    CHECK_THROWS_CODE(tx.write("w", std::vector<float>(5)), THEUS_EINVAL);
    CHECK_THROWS_CODE(tx.write("w", theus::region{{0, 3}, {0, 3}}, std::vector<float>(9)), THEUS_EINVAL);
    CHECK(tx.active());
    // A constraint violation refuses the commit (and consumes the transaction).
    std::vector<float> bad(6, 0.0f);
    bad[4] = std::numeric_limits<float>::infinity();
    tx.write("w", bad);
    try {
        tx.commit();
        CHECK(!"commit of a non-finite value succeeded");
    } catch (const theus::error &e) {
        CHECK(e.code() == THEUS_ESCHEMA);
        CHECK(std::string(e.code_name()) == theus_strerror(THEUS_ESCHEMA));
        CHECK(std::string(e.what()).find("w") != std::string::npos);
    }
    CHECK(!tx.active());
    CHECK(st.version() == 1);
}

TEST(conflicts_carry_field_region_and_version)
{
    theus::state st = theus::state::create(schema);
    theus::transaction a = st.begin();
    theus::transaction b = st.begin();
    std::vector<float> row = {1, 1, 1};
    a.write("w", theus::region{{0, 1}, {0, 3}}, row);
    b.write("w", theus::region{{0, 1}, {1, 2}}, theus::scalar(2.0f));
    CHECK(a.commit() == 2);
    try {
        b.commit();
        CHECK(!"overlapping ASSIGNs from one base both committed");
    } catch (const theus::conflict_error &e) {
        CHECK(e.code() == THEUS_ECONFLICT);
        CHECK(std::string(e.conflict().field) == "w");
        CHECK(e.conflict().kind == THEUS_CONFLICT_WRITE_WRITE);
        CHECK(e.conflict().version == 2);
        CHECK(e.conflict().base == 1);
        theus::region hit(e.conflict().region);
        CHECK(hit.ndim() == 2 && hit.dim(0).start == 0 && hit.dim(0).stop == 1);
    }
    // ADDs from one base never conflict.
    theus::transaction c = st.begin(), d = st.begin();
    c.add("w", theus::region{{1, 2}, {0, 3}}, row);
    d.add("w", theus::region{{1, 2}, {0, 3}}, row);
    c.commit();
    d.commit();
    theus::transaction rd = st.begin();
    CHECK(rd.read_vector<float>("w", theus::region{{1, 2}, {0, 3}}) == std::vector<float>(3, 2.0f));
}

TEST(regions_and_views)
{
    theus::region r{{1, 2}, {0, 3}};
    CHECK(r.ndim() == 2 && r.elements() == 3);
    CHECK(r.c_region()->start[1] == 0 && r.c_region()->stop[1] == 3);
    CHECK(theus::region{}.ndim() == 0 && theus::region{}.elements() == 1);
    CHECK(theus::region::span1(4, 10).elements() == 6);
    CHECK_THROWS_CODE(r.dim(2), THEUS_EINVAL);
    std::vector<theus::range> many(THEUS_MAX_DIMS + 1, theus::range{0, 1});
    CHECK_THROWS_CODE(theus::region(many.data(), many.size()), THEUS_EINVAL);

    float a[4] = {1, 2, 3, 4};
    theus::view<float> v(a);
    CHECK(v.size() == 4 && v.size_bytes() == 16 && v[3] == 4);
    theus::view<const float> cv = v;
    float sum = 0;
    for (float x : cv)
        sum += x;
    CHECK(sum == 10);
    std::vector<double> dv(3);
    theus::view<double> vv(dv);
    CHECK(vv.data() == dv.data() && !vv.empty());
}

int main()
{
    for (const test_case &t : registry()) {
        int before = failures;
        try {
            t.body();
        } catch (const std::exception &e) {
            std::fprintf(stderr, "%s: unexpected exception: %s\n", t.name, e.what());
            failures++;
        }
        std::printf("[%s] %s\n", failures == before ? "PASS" : "FAIL", t.name);
    }
    std::printf("%zu tests, %d failed checks\n", registry().size(), failures);
    return failures ? 1 : 0;
}
