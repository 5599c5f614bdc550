/* The pod sandbox ("pause") process of the CRI suite's local pause image
 * (integration/test_cri.py builds it with `gcc -static` at test time; there
 * is no registry here). It does what the upstream pause does: holds the pod's
 * namespaces, exits 0 on SIGINT/SIGTERM, and as PID 1 of a shared-PID pod
 * reaps every orphan re-parented to it. */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(void) {
  struct sigaction term = {.sa_handler = on_term};
  struct sigaction chld = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigemptyset(&term.sa_mask);
  sigemptyset(&chld.sa_mask);
  if (sigaction(SIGINT, &term, 0) || sigaction(SIGTERM, &term, 0) || sigaction(SIGCHLD, &chld, 0)) return 1;
  for (;;) pause();
}
