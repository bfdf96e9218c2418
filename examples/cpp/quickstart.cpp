// The README's C++ example: the C quick start through include/theus/theus.hpp.
#include <theus/theus.hpp>
#include <cstdio>
#include <vector>

int main()
{
    const char *schema =
        "{\"name\": \"demo\", \"fields\": {"
        "  \"w\":    {\"dtype\": \"f32\", \"shape\": [2, 3], \"constraints\": {\"finite\": true}},"
        "  \"step\": {\"dtype\": \"i64\", \"shape\": []}}}";
    try {
        theus::state st = theus::state::create(schema);

        theus::transaction tx = st.begin();               // base = current version (1)
        const std::vector<float> ones(3, 1.0f);
        tx.add("w", theus::region{{1, 2}, {0, 3}}, ones);   // w[1, :] += 1
        tx.add("step", theus::scalar<std::int64_t>(1));     // no region: the whole field
        std::uint64_t v = tx.commit();                      // throws on conflict or schema

        theus::transaction rd = st.begin();
        std::vector<float> w = rd.read_vector<float>("w");
        // rd aborts when it goes out of scope: read-only transactions need no commit.
        std::printf("version %llu, w[1][0] = %g\n", (unsigned long long)v, w[3]);
    } catch (const theus::conflict_error &e) {
        std::fprintf(stderr, "conflict on '%s' at version %llu: %s\n", e.conflict().field,
                     (unsigned long long)e.conflict().version, e.what());
        return 1;
    } catch (const theus::error &e) {
        std::fprintf(stderr, "%s\n", e.what());   // e.code(): the THEUS_E* status
        return 1;
    }
    return 0;
}
