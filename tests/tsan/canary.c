/* A deliberate data race: the ThreadSanitizer build runs this to show that TSan is really
 * on (ctest passes it only when TSan reports the race), so that a clean TSan pass means
 * something. Two threads write one plain int with nothing ordering them. */
#include <pthread.h>
#include <stdio.h>

static int shared_counter;

static void *bump(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        shared_counter++;
    return NULL;
}

int main(void)
{
    pthread_t a, b;
    if (pthread_create(&a, NULL, bump, NULL) != 0 || pthread_create(&b, NULL, bump, NULL) != 0)
        return 2;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("counter %d\n", shared_counter);
    return 0;
}
