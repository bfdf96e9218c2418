/* Signals and waits across the processes of a shared state (shared_signal.h). A commit's
 * signals are staged under the commit lock before its redo record is complete and delivered
 * after its version is published and the listeners before the engine's have run (the log's
 * sync) — by the committing process, or, when it died, by the next taker of the commit lock
 * if the commit was published (finished from its redo record, or published before the
 * death) — so that a refused or dropped commit never signals and a recovered one signals
 * once (a delivery stores counts computed when staged: applying it twice is applying it
 * once). Waiters sleep on process-shared futex words and
 * look again at what they wait for on every wake-up.
 *
 * Wake-ups are paid only when someone waits: a writer stores what changed, then (after a
 * full fence) reads `waiters`; a waiter adds itself to `waiters`, then (after a full fence)
 * reads the word and what it waits for. Either the writer sees the waiter and bumps and
 * wakes, or the waiter sees what the writer stored.
 *
 * A waiter killed while it waits cannot take itself out of `waiters`, so each process
 * counts its waiting threads in a slot of its own too (pid and start time), and every wait
 * that begins takes back the slots of dead processes with their counts. A waiter adds
 * itself to `waiters` before its slot and takes itself out of its slot before `waiters`:
 * a slot never holds more than its process added, so taking a slot back never makes
 * `waiters` smaller than the threads really waiting (which would lose wake-ups); a process
 * killed between the two steps leaves at most one count behind (a futex wake per commit). */
#include "shared_impl.h"
#include "error.h"
#include "redo.h"
#include "theus/theus_process.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define MAXS THEUS_SHARED_MAX_SIGNALS

void (*shared_signal_fault_hook)(int point);

static shared_signal_area *area_of(const theus_state *st)
{
    return &shared_area_of(st)->sig;
}

/* Named slots, bounded by the table (the segment is another process's writing). */
static uint32_t named(const shared_signal_area *s)
{
    uint32_t n = atomic_load(&s->n);
    return n > MAXS ? MAXS : n;
}

static int find_in(const shared_signal_area *s, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (strncmp(s->e[i].name, name, sizeof s->e[i].name) == 0)
            return (int)i;
    return -1;
}

/* Bump @word and wake its sleepers when someone may sleep on it. */
static void wake(const shared_signal_area *s, _Atomic uint32_t *word)
{
    if (atomic_load(&s->waiters))
        state_futex_wake(word, 1);
}

/* Under the commit lock: stage @names as a delivery of kind @kind for @version. */
static int stage(theus_state *st, const char (*names)[THEUS_NAME_MAX + 1], size_t n,
                 uint64_t version, uint32_t kind)
{
    shared_signal_area *s = area_of(st);
    uint32_t cur = named(s), next = cur, ns = 0;
    atomic_store(&s->staged_state, SIG_STAGED_NONE);
    for (size_t i = 0; i < n; i++) {
        int slot = find_in(s, next, names[i]);
        if (slot < 0) {
            if (next >= MAXS)
                return err_set(st, THEUS_ENOMEM, "signal '%s': the signal table of shared state "
                               "'%s' is full (%d names, THEUS_SHARED_MAX_SIGNALS)", names[i],
                               shared_area_of(st)->name, MAXS);
            /* Not named until a delivery moves n over it: no reader looks at it before. */
            memcpy(s->e[next].name, names[i], sizeof s->e[next].name);
            s->e[next].name[THEUS_NAME_MAX] = '\0';
            slot = (int)next++;
        }
        uint32_t k = 0;
        while (k < ns && s->staged[k].slot != (uint32_t)slot)
            k++;
        if (k == ns) {
            s->staged[ns].slot = (uint32_t)slot;
            s->staged[ns].count = (uint32_t)slot < cur ? atomic_load(&s->e[slot].count) : 0;
            ns++;
        }
        s->staged[k].count++;
    }
    s->staged_n = next;
    s->nstaged = ns;
    s->staged_version = version;
    atomic_store(&s->staged_state, kind);
    return THEUS_OK;
}

/* Under the commit lock: apply the staged delivery as made by @version, wake its waiters.
 * Stores only (counts computed when staged): a second application changes nothing. */
static void apply(shared_signal_area *s, uint64_t version)
{
    uint32_t ns = s->nstaged > MAXS ? MAXS : s->nstaged;
    for (uint32_t k = 0; k < ns; k++) {
        uint32_t slot = s->staged[k].slot;
        if (slot >= MAXS)
            continue;
        atomic_store(&s->e[slot].last_version, version);
        atomic_store(&s->e[slot].count, s->staged[k].count);
        if (k == 0 && shared_signal_fault_hook)
            shared_signal_fault_hook(SIG_POINT_APPLYING);
    }
    int grew = s->staged_n > atomic_load(&s->n) && s->staged_n <= MAXS;
    if (grew)
        atomic_store(&s->n, s->staged_n);
    atomic_thread_fence(memory_order_seq_cst);
    for (uint32_t k = 0; k < ns; k++)
        if (s->staged[k].slot < MAXS)
            wake(s, &s->e[s->staged[k].slot].wake);
    if (grew)
        wake(s, &s->table_wake);
}

int shared_signal_stage(theus_state *st, const char (*names)[THEUS_NAME_MAX + 1], size_t n,
                        uint64_t version)
{
    return n ? stage(st, names, n, version, SIG_STAGED_COMMIT) : THEUS_OK;
}

void shared_signal_unstage(theus_state *st)
{
    /* A commit whose replay failed after its redo record was complete is not cancelled in
     * the segment: the record stays and the next taker of the commit lock finishes and
     * publishes it, and its signals with it (shared_signal_recover), as for a holder that
     * died there. A signal follows the commit being published, not its caller's status. */
    if (redo_pending(st))
        return;
    atomic_store(&area_of(st)->staged_state, SIG_STAGED_NONE);
}

void shared_signal_published(theus_state *st, uint64_t version)
{
    shared_signal_area *s = area_of(st);
    uint32_t kind = atomic_load(&s->staged_state);
    if (kind == SIG_STAGED_COMMIT && s->staged_version == version)
        apply(s, version);
    if (kind != SIG_STAGED_NONE)
        atomic_store(&s->staged_state, SIG_STAGED_NONE);
}

void shared_signal_version_published(theus_state *st)
{
    shared_signal_area *s = area_of(st);
    atomic_thread_fence(memory_order_seq_cst);
    wake(s, &s->version_wake);
}

void shared_signal_recover(theus_state *st)
{
    shared_signal_area *s = area_of(st);
    uint32_t kind = atomic_load(&s->staged_state);
    if (kind == SIG_STAGED_NONE)
        return;
    /* Under the commit lock, only the holder that staged for version V could publish V: if
     * the state is there, that commit was published (its holder died before delivering, or
     * while delivering); if not, it never will be (its redo record was dropped) and it
     * signals nothing. */
    if (kind == SIG_STAGED_READY ||
        (kind == SIG_STAGED_COMMIT &&
         atomic_load(&st->hdr->version) >= s->staged_version))
        apply(s, s->staged_version);
    atomic_store(&s->staged_state, SIG_STAGED_NONE);
}

int shared_signal_deliver(theus_state *st, const char (*names)[THEUS_NAME_MAX + 1], size_t n)
{
    if (!n)
        return THEUS_OK;
    int rc = state_lock(st);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "signals of a run that wrote nothing were not delivered");
    uint64_t version = atomic_load(&st->hdr->version);
    rc = stage(st, names, n, version, SIG_STAGED_READY);
    if (rc == THEUS_OK) {
        apply(area_of(st), version);
        atomic_store(&area_of(st)->staged_state, SIG_STAGED_NONE);
    }
    state_unlock(st);
    return rc;
}

int shared_signal_known(const theus_state *st, const char *name)
{
    const shared_signal_area *s = area_of(st);
    return find_in(s, named(s), name) >= 0;
}

uint32_t shared_signal_named(const theus_state *st)
{
    return named(area_of(st));
}

uint64_t shared_signal_count(const theus_state *st, const char *name)
{
    const shared_signal_area *s = area_of(st);
    int slot = find_in(s, named(s), name);
    return slot < 0 ? 0 : atomic_load(&s->e[slot].count);
}

/* ---- waiter slots ---------------------------------------------------------------------- */

/* This process's start time (shared_proc_start), read once per process: a forked child sees
 * another pid and reads its own. 0 when /proc cannot tell. */
static _Atomic int32_t self_pid;
static _Atomic uint64_t self_start_v;

static uint64_t self_start(pid_t me)
{
    if (atomic_load(&self_pid) == (int32_t)me)
        return atomic_load(&self_start_v);
    uint64_t start = shared_proc_start(me);
    atomic_store(&self_start_v, start);
    atomic_store(&self_pid, (int32_t)me);
    return start;
}

/* Whether the process of a slot (pid @pid, start @start as read) is gone. A start of 0 is
 * a slot being claimed (its pid is stored first): gone only when no process has the pid. */
static int waiter_gone(int32_t pid, uint64_t start, pid_t me, uint64_t my_start)
{
    if (pid == (int32_t)me)
        return start != 0 && start != my_start; /* a dead process whose pid this one got */
    if (!start)
        return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
    return !shared_proc_alive(pid, start);
}

uint32_t shared_signal_reap_waiters(theus_state *st)
{
    shared_signal_area *s = area_of(st);
    pid_t me = getpid();
    uint64_t my_start = self_start(me);
    if (!my_start)
        return 0; /* /proc tells nothing here: no process is taken for dead */
    uint32_t took = 0;
    for (uint32_t i = 0; i < SIG_WAITER_SLOTS; i++) {
        shared_signal_waiter *w = &s->w[i];
        int32_t pid = atomic_load(&w->pid);
        if (pid <= 0)
            continue;
        uint64_t start = atomic_load(&w->start);
        if (!waiter_gone(pid, start, me, my_start))
            continue;
        int32_t expect = pid;
        if (!atomic_compare_exchange_strong(&w->pid, &expect, SIG_WAITER_BUSY))
            continue; /* another wait took it back first */
        if (atomic_load(&w->start) != start) {
            atomic_store(&w->pid, pid); /* freed and claimed again meanwhile: not that one */
            continue;
        }
        uint32_t n = atomic_exchange(&w->n, 0u);
        if (n)
            atomic_fetch_sub(&s->waiters, n);
        took += n;
        atomic_store(&w->start, 0);
        atomic_store(&w->pid, 0);
    }
    return took;
}

/* Count the calling thread in: `waiters`, then its process's slot (found or claimed).
 * Returns the slot, or SIG_WAITER_SLOTS when it has none. */
static uint32_t waiter_enter(shared_signal_area *s)
{
    atomic_fetch_add(&s->waiters, 1u);
    pid_t me = getpid();
    uint64_t my_start = self_start(me);
    if (!my_start)
        return SIG_WAITER_SLOTS;
    for (uint32_t i = 0; i < SIG_WAITER_SLOTS; i++)
        if (atomic_load(&s->w[i].pid) == (int32_t)me && atomic_load(&s->w[i].start) == my_start) {
            atomic_fetch_add(&s->w[i].n, 1u);
            return i;
        }
    for (uint32_t i = 0; i < SIG_WAITER_SLOTS; i++) {
        int32_t free_pid = 0;
        if (atomic_compare_exchange_strong(&s->w[i].pid, &free_pid, (int32_t)me)) {
            atomic_store(&s->w[i].start, my_start);
            atomic_fetch_add(&s->w[i].n, 1u);
            return i;
        }
    }
    return SIG_WAITER_SLOTS;
}

static void waiter_leave(shared_signal_area *s, uint32_t slot)
{
    if (slot < SIG_WAITER_SLOTS)
        atomic_fetch_sub(&s->w[slot].n, 1u);
    atomic_fetch_sub(&s->waiters, 1u);
}

/* ---- waits ------------------------------------------------------------------------------ */

int shared_signal_wait(theus_state *st, const shared_wait *w, uint64_t *seen)
{
    shared_area *a = shared_area_of(st);
    shared_signal_area *s = &a->sig;
    uint64_t start = state_now_ns();
    uint64_t deadline = w->timeout_ns > UINT64_MAX - start ? UINT64_MAX : start + w->timeout_ns;
    if (atomic_load(&s->waiters))
        shared_signal_reap_waiters(st); /* someone is counted: maybe a dead one */
    uint32_t mine = waiter_enter(s);
    atomic_thread_fence(memory_order_seq_cst);
    int rc;
    uint64_t cur = 0;
    for (;;) {
        _Atomic uint32_t *word;
        uint32_t before;
        if (w->signal) {
            int slot = find_in(s, named(s), w->signal);
            word = slot >= 0 ? &s->e[slot].wake : &s->table_wake;
            before = atomic_load(word);
            if (slot < 0 && find_in(s, named(s), w->signal) >= 0)
                continue; /* named meanwhile: sleep on its own word */
            cur = slot >= 0 ? atomic_load(&s->e[slot].count) : 0;
        } else {
            word = &s->version_wake;
            before = atomic_load(word);
            cur = w->field < 0 ? atomic_load(&st->hdr->version)
                               : atomic_load(&st->fields[w->field].version);
        }
        if (cur > w->after) {
            rc = THEUS_OK;
            break;
        }
        if (atomic_load(&a->unlinked)) {
            rc = THEUS_ENOENT;
            break;
        }
        if (w->closing && atomic_load(w->closing)) {
            rc = THEUS_EBUSY;
            break;
        }
        uint64_t now = state_now_ns();
        if (now >= deadline) {
            rc = THEUS_ETIMEDOUT;
            break;
        }
        state_futex_wait(word, before, 1, deadline == UINT64_MAX ? 0 : deadline - now);
    }
    waiter_leave(s, mine);
    if (seen)
        *seen = cur;
    return rc;
}

void shared_signal_wake_all(shared_area *a)
{
    shared_signal_area *s = &a->sig;
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t n = named(s);
    for (uint32_t i = 0; i < n; i++)
        state_futex_wake(&s->e[i].wake, 1);
    state_futex_wake(&s->version_wake, 1);
    state_futex_wake(&s->table_wake, 1);
}
