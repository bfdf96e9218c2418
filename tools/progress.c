/* Progress of long operations on stderr: one line rewritten in place (percent, count,
 * estimated time left), at most four times a second, erased when the operation ends. */
#include "cli.h"

#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_start(cli_progress *p, int mode, const char *what, uint64_t total)
{
    p->on = mode > 0 || (mode == 0 && isatty(STDERR_FILENO));
    p->what = what;
    p->total = total;
    p->done = 0;
    p->t0 = p->last = now_s();
}

void cli_progress_add(cli_progress *p, uint64_t n)
{
    p->done += n;
    if (!p->on || p->total == 0)
        return;
    double t = now_s();
    if (t - p->last < 0.25 || t - p->t0 < 0.5)
        return;
    p->last = t;
    double frac = (double)p->done / (double)p->total;
    double left = frac > 0 ? (t - p->t0) * (1 - frac) / frac : 0;
    fprintf(stderr, "\r\033[Ktheus %s: %3.0f%% (%llu of %llu), about %.0f s left", p->what,
            frac * 100, (unsigned long long)p->done, (unsigned long long)p->total, left);
    fflush(stderr);
}

void cli_progress_end(cli_progress *p)
{
    if (p->on && p->last > p->t0)
        fprintf(stderr, "\r\033[K");
}
