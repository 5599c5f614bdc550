/* attack: the escape battery's helper, run inside a container.
 *
 * One subcommand per attack. Each prints exactly one line,
 *   BLOCKED: <how it failed>     (exit 0)
 *   ESCAPED: <what it achieved>  (exit 1)
 * or ERROR: <why the attempt could not be judged> (exit 2).
 *
 * Every attempt is harmless to the machine even when it succeeds: capability
 * bits are read instead of setting the clock or rebooting, sysctls get the
 * value just read written back, special files are opened but never written,
 * processes targeted are the helper's own children, and anything created
 * (keys, cgroup directories, mounts) is removed again at once.
 *
 * Built static (gcc -static -O2) by the test session; no libraries needed in
 * the container. The attack runs in a forked child so that a seccomp kill
 * (SIGSYS) is reported as a verdict instead of a lost line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#define X32_BIT 0x40000000
#ifndef TIOCLINUX
#define TIOCLINUX 0x541C
#endif

static int g_argc;
static char** g_argv;

static void say(const char* kind, int code, const char* fmt, va_list ap) {
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "%s: ", kind);
  n += vsnprintf(buf + n, sizeof buf - (size_t)n - 2, fmt, ap);
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  for (int i = 0; i < n; i++)
    if (buf[i] == '\n') buf[i] = ' ';
  buf[n++] = '\n';
  ssize_t w = write(1, buf, (size_t)n);
  (void)w;
  _exit(code);
}
__attribute__((noreturn, format(printf, 1, 2))) static void blocked(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say("BLOCKED", 0, fmt, ap);
  va_end(ap);
  _exit(0);
}
__attribute__((noreturn, format(printf, 1, 2))) static void escaped(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say("ESCAPED", 1, fmt, ap);
  va_end(ap);
  _exit(1);
}
__attribute__((noreturn, format(printf, 1, 2))) static void error_out(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  say("ERROR", 2, fmt, ap);
  va_end(ap);
  _exit(2);
}

static const char* en(int e) {
  const char* n = strerrorname_np(e);
  return n ? n : "errno?";
}
static const char* arg(int i) {
  if (i + 2 >= g_argc) error_out("missing argument %d for %s", i, g_argv[1]);
  return g_argv[i + 2];
}

/* A directory this process can write to, or NULL. */
static const char* scratch_dir(void) {
  static const char* cands[] = {"/tmp", "/dev/shm", "/run", "/var/tmp", "/home/agent", "/workspace", NULL};
  for (int i = 0; cands[i]; i++) {
    char p[256];
    snprintf(p, sizeof p, "%s/.attack-probe-%d", cands[i], (int)getpid());
    int fd = open(p, O_CREAT | O_WRONLY | O_EXCL, 0600);
    if (fd >= 0) {
      close(fd);
      unlink(p);
      return cands[i];
    }
  }
  return NULL;
}

static int cap_eff_bit(int bit) {
  FILE* f = fopen("/proc/self/status", "r");
  if (!f) error_out("open /proc/self/status: %s", en(errno));
  char line[256];
  unsigned long long v = 0;
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "CapEff: %llx", &v) == 1) {
      found = 1;
      break;
    }
  fclose(f);
  if (!found) error_out("no CapEff in /proc/self/status");
  return (int)((v >> bit) & 1);
}

/* Is this process in the namespace whose inode the test passed (the host's)?
 * Attacks that would be harmful in a host namespace check this first. */
static int in_host_ns(const char* type, const char* host_ino) {
  char p[64];
  snprintf(p, sizeof p, "/proc/self/ns/%s", type);
  struct stat st;
  if (stat(p, &st) != 0) error_out("stat %s: %s", p, en(errno));
  return (unsigned long long)st.st_ino == strtoull(host_ino, NULL, 10);
}

/* ---------------------------------------------------------------- filesystem */

static void a_rootfs_write(void) {
  int fd = open("/.escape-rootfs-write", O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) blocked("creating /.escape-rootfs-write: %s", en(errno));
  ssize_t w = write(fd, "x", 1);
  close(fd);
  unlink("/.escape-rootfs-write");
  if (w != 1) blocked("write to the root filesystem failed: %s", en(errno));
  escaped("created and wrote /.escape-rootfs-write on the root filesystem");
}

static void a_rootfs_overwrite_binary(void) {
  /* Open a binary of the image for writing (never written). */
  int fd = open("/bin/busybox", O_WRONLY);
  if (fd < 0) blocked("open /bin/busybox O_WRONLY: %s", en(errno));
  close(fd);
  escaped("opened /bin/busybox of the image for writing");
}

static void a_remount_root_rw(void) {
  /* Per-mount flags only (MS_BIND): never a superblock remount, which on a
   * bind-mounted host filesystem would change the host's mount options. */
  if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL) == 0)
    escaped("remounted / (MS_REMOUNT|MS_BIND without MS_RDONLY)");
  blocked("remount of / (MS_REMOUNT|MS_BIND): %s", en(errno));
}

static const char* mount_target(void) {
  struct stat st;
  if (stat("/tmp", &st) == 0 && S_ISDIR(st.st_mode)) return "/tmp";
  return "/mnt";
}

static void a_mount_tmpfs(void) {
  const char* t = mount_target();
  if (mount("tmpfs", t, "tmpfs", 0, "size=1m") == 0) {
    umount2(t, MNT_DETACH);
    escaped("mounted a tmpfs on %s", t);
  }
  blocked("mount tmpfs on %s: %s", t, en(errno));
}

static void a_mount_proc(void) {
  const char* t = mount_target();
  if (mount("proc", t, "proc", 0, NULL) == 0) {
    umount2(t, MNT_DETACH);
    escaped("mounted a new proc on %s", t);
  }
  blocked("mount proc on %s: %s", t, en(errno));
}

static void a_mount_bind(void) {
  const char* t = mount_target();
  if (mount("/", t, NULL, MS_BIND | MS_REC, NULL) == 0) {
    umount2(t, MNT_DETACH);
    escaped("bind-mounted / on %s", t);
  }
  blocked("bind mount / on %s: %s", t, en(errno));
}

static void a_mount_fsopen(void) {
  long fd = syscall(SYS_fsopen, "tmpfs", 0);
  if (fd < 0) blocked("fsopen(tmpfs): %s", en(errno));
  close((int)fd);
  escaped("fsopen(\"tmpfs\") returned a filesystem context (new mount API)");
}

static void a_open_tree(void) {
  long fd = syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | AT_RECURSIVE);
  if (fd < 0) blocked("open_tree(/, OPEN_TREE_CLONE): %s", en(errno));
  close((int)fd);
  escaped("open_tree(OPEN_TREE_CLONE) detached a copy of the mount tree");
}

/* ---------------------------------------------------------------- namespaces */

static int ns_flag(const char* t) {
  static const struct {
    const char* n;
    int f;
  } m[] = {{"user", CLONE_NEWUSER},     {"mnt", CLONE_NEWNS},    {"pid", CLONE_NEWPID},
           {"net", CLONE_NEWNET},       {"uts", CLONE_NEWUTS},   {"ipc", CLONE_NEWIPC},
           {"cgroup", CLONE_NEWCGROUP}, {"time", CLONE_NEWTIME}, {NULL, 0}};
  for (int i = 0; m[i].n; i++)
    if (!strcmp(m[i].n, t)) return m[i].f;
  error_out("unknown namespace type %s", t);
}

static void a_unshare(void) {
  const char* t = arg(0);
  int f = ns_flag(t);
  if (unshare(f) == 0) escaped("unshare(%s) created a new %s namespace", t, t);
  blocked("unshare(%s): %s", t, en(errno));
}

static void a_clone_newuser(void) {
  long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) _exit(0);
  if (pid < 0) blocked("clone(CLONE_NEWUSER): %s", en(errno));
  waitpid((pid_t)pid, NULL, 0);
  escaped("clone(CLONE_NEWUSER) started a child in a new user namespace");
}

static void a_clone3_newuser(void) {
  struct {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
  } args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid == 0) _exit(0);
  if (pid < 0) blocked("clone3(CLONE_NEWUSER): %s", en(errno));
  waitpid((pid_t)pid, NULL, 0);
  escaped("clone3(CLONE_NEWUSER) started a child in a new user namespace");
}

/* A sibling tries to create a namespace of the type, then the attacker opens
 * /proc/<sibling>/ns/<type> and setns()es into it. Success means the attacker
 * can join whatever namespace fd it can reach. */
static void a_setns(void) {
  const char* t = arg(0);
  int f = ns_flag(t);
  int p[2];
  if (pipe(p) < 0) error_out("pipe: %s", en(errno));
  pid_t c = fork();
  if (c < 0) error_out("fork: %s", en(errno));
  if (c == 0) {
    close(p[0]);
    char ok = unshare(f) == 0 ? 'n' : 's';
    if (write(p[1], &ok, 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(p[1]);
  char ok = 0;
  if (read(p[0], &ok, 1) != 1) error_out("sibling died before reporting");
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)c, t);
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    int e = errno;
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    if (e == ENOENT) blocked("%s does not exist (kernel lacks %s namespaces or /proc hides it)", path, t);
    blocked("open %s: %s", path, en(e));
  }
  int r = setns(fd, f);
  int e = errno;
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
  const char* which = ok == 'n' ? "a new namespace the sibling created" : "the sibling's (shared) namespace";
  if (r == 0) escaped("setns(%s) joined %s", t, which);
  blocked("setns(%s) into %s: %s", t, which, en(e));
}

static void a_cap_bit(void) {
  int bit = atoi(arg(0));
  const char* name = arg(1);
  if (cap_eff_bit(bit)) escaped("%s (bit %d) is in the effective capability set", name, bit);
  blocked("%s (bit %d) is not in CapEff", name, bit);
}

/* ---------------------------------------------------------------- ptrace */

static void a_ptrace_sibling(void) {
  pid_t c = fork();
  if (c < 0) error_out("fork: %s", en(errno));
  if (c == 0) {
    for (;;) pause();
  }
  usleep(20000);
  long r = ptrace(PTRACE_ATTACH, c, 0, 0);
  int e = errno;
  if (r == 0) {
    waitpid(c, NULL, __WALL);
    errno = 0;
    long word = ptrace(PTRACE_PEEKDATA, c, (void*)&a_ptrace_sibling, 0);
    int pe = errno;
    ptrace(PTRACE_DETACH, c, 0, 0);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    escaped("PTRACE_ATTACH to sibling pid %d succeeded (PEEKDATA: %s, word %lx)", (int)c, pe ? en(pe) : "ok",
            (unsigned long)word);
  }
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
  blocked("PTRACE_ATTACH to sibling: %s", en(e));
}

static void a_process_vm_readv(void) {
  static volatile char secret[16] = "sibling-secret";
  pid_t c = fork();
  if (c < 0) error_out("fork: %s", en(errno));
  if (c == 0) {
    for (;;) pause();
  }
  usleep(20000);
  char buf[16] = {0};
  struct iovec l = {buf, sizeof buf}, r = {(void*)secret, sizeof secret};
  ssize_t n = process_vm_readv(c, &l, 1, &r, 1, 0);
  int e = errno;
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
  if (n > 0) escaped("process_vm_readv read %zd bytes of a sibling's memory", n);
  blocked("process_vm_readv of a sibling: %s", en(e));
}

/* As a non-root user: PTRACE_TRACEME, then exec the setuid-root copy of this
 * helper; the traced child reports its effective uid through a pipe. */
static void a_ptrace_traceme_setuid(void) {
  const char* suid = arg(0);
  if (geteuid() == 0) error_out("run this attack as a non-root user");
  int p[2];
  if (pipe(p) < 0) error_out("pipe: %s", en(errno));
  pid_t c = fork();
  if (c < 0) error_out("fork: %s", en(errno));
  if (c == 0) {
    close(p[0]);
    if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) {
      dprintf(p[1], "traceme:%s\n", en(errno));
      _exit(3);
    }
    dup2(p[1], 1);
    execl(suid, suid, "whoami", (char*)NULL);
    dprintf(p[1], "exec:%s\n", en(errno));
    _exit(4);
  }
  close(p[1]);
  int st;
  /* Tracee stops at exec with SIGTRAP; let it run on. */
  for (;;) {
    if (waitpid(c, &st, 0) < 0) break;
    if (WIFSTOPPED(st)) {
      int sig = WSTOPSIG(st) == SIGTRAP ? 0 : WSTOPSIG(st);
      ptrace(PTRACE_CONT, c, 0, sig);
      continue;
    }
    break;
  }
  char out[128] = {0};
  ssize_t n = read(p[0], out, sizeof out - 1);
  if (n <= 0) error_out("traced child printed nothing");
  out[strcspn(out, "\n")] = 0;
  if (!strncmp(out, "traceme:", 8)) blocked("PTRACE_TRACEME: %s", out + 8);
  if (!strncmp(out, "exec:", 5)) error_out("exec %s: %s", suid, out + 5);
  if (!strncmp(out, "euid=0", 6)) escaped("traced setuid-root binary ran with %s under a tracer", out);
  blocked("PTRACE_TRACEME allowed, but the setuid exec under trace ran with %s", out);
}

/* ---------------------------------------------------------------- kernel modules */

static void classify_module(const char* what, long r, int e) {
  if (r == 0) escaped("%s succeeded", what);
  if (e == EPERM || e == ENOSYS || e == EACCES) blocked("%s: %s", what, en(e));
  escaped("%s got past the capability check (%s: CAP_SYS_MODULE held)", what, en(e));
}

static void a_finit_module(void) {
  int fd = (int)syscall(SYS_memfd_create, "empty-module", 0);
  if (fd < 0) error_out("memfd_create: %s", en(errno));
  long r = syscall(SYS_finit_module, fd, "", 0);
  classify_module("finit_module(empty memfd)", r, errno);
}

static void a_init_module(void) {
  static char garbage[64] = "this is not an ELF kernel module";
  long r = syscall(SYS_init_module, garbage, sizeof garbage, "");
  classify_module("init_module(garbage)", r, errno);
}

static void a_delete_module(void) {
  long r = syscall(SYS_delete_module, "agentshim_no_such_module", O_NONBLOCK);
  int e = errno;
  if (r == 0) escaped("delete_module succeeded");
  if (e == EPERM || e == ENOSYS) blocked("delete_module: %s", en(e));
  escaped("delete_module got past the capability check (%s)", en(e));
}

/* ---------------------------------------------------------------- sockets and network */

static void a_raw_socket(void) {
  int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (s < 0) blocked("socket(AF_INET, SOCK_RAW): %s", en(errno));
  close(s);
  escaped("opened a raw IPv4 socket");
}

static void a_packet_socket(void) {
  int s = socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */));
  if (s < 0) blocked("socket(AF_PACKET, SOCK_RAW): %s", en(errno));
  close(s);
  escaped("opened an AF_PACKET socket");
}

/* Connect with a timeout; returns 0 on success, else errno. */
static int connect_to(const char* ip, int port, int timeout_ms, int* fd_out) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) error_out("bad address %s", ip);
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (s < 0) return errno;
  int r = connect(s, (struct sockaddr*)&sa, sizeof sa);
  if (r < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(s);
    return e;
  }
  if (r < 0) {
    struct pollfd pfd = {s, POLLOUT, 0};
    int n = poll(&pfd, 1, timeout_ms);
    if (n == 0) {
      close(s);
      return ETIMEDOUT;
    }
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      close(s);
      return err;
    }
  }
  *fd_out = s;
  return 0;
}

/* host_tcp PORT TOKEN IP...: the host-side test serves TOKEN on each IP:PORT
 * it listens on. ESCAPED if any connection reads the token, or a host address
 * answers at all (a RST from a host address means its stack is reachable). */
static void a_host_tcp(void) {
  int port = atoi(arg(0));
  const char* token = arg(1);
  char report[768] = "";
  for (int i = 2; i + 2 < g_argc; i++) {
    const char* ip = g_argv[i + 2];
    int fd = -1;
    int e = connect_to(ip, port, 1000, &fd);
    if (e == 0) {
      char buf[128] = {0};
      struct pollfd pfd = {fd, POLLIN, 0};
      ssize_t n = poll(&pfd, 1, 1000) > 0 ? read(fd, buf, sizeof buf - 1) : 0;
      close(fd);
      if (n > 0 && strstr(buf, token))
        escaped("connected to %s:%d and read the host service's token", ip, port);
      escaped("connected to %s:%d (no token: %zd bytes)", ip, port, n);
    }
    if (e == ECONNREFUSED && strncmp(ip, "127.", 4) != 0)
      escaped("host address %s answered (ECONNREFUSED: its network stack is reachable)", ip);
    size_t l = strlen(report);
    snprintf(report + l, sizeof report - l, "%s%s:%d %s", l ? ", " : "", ip, port, en(e));
  }
  blocked("%s", report[0] ? report : "no addresses given");
}

static void a_metadata(void) {
  /* Never from the host's network namespace: the SYN would leave the machine. */
  if (in_host_ns("net", arg(0)))
    escaped("shares the host's network namespace (169.254.169.254 not contacted)");
  int fd = -1;
  int e = connect_to("169.254.169.254", 80, 1000, &fd);
  if (e == 0) {
    close(fd);
    escaped("connected to 169.254.169.254:80");
  }
  if (e == ECONNREFUSED) escaped("169.254.169.254 is routable (ECONNREFUSED from a reachable stack)");
  if (e == ETIMEDOUT) escaped("a route to 169.254.169.254 exists (SYN sent, timed out after 1 s)");
  blocked("connect 169.254.169.254:80: %s", en(e));
}

/* ---------------------------------------------------------------- /proc and /sys */

static void a_read_file(void) {
  const char* p = arg(0);
  int fd = open(p, O_RDONLY);
  if (fd < 0) blocked("open %s: %s", p, en(errno));
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf);
  int e = errno;
  close(fd);
  if (n > 0) escaped("read %zd bytes from %s", n, p);
  if (n == 0) blocked("%s reads as empty (masked)", p);
  blocked("read %s: %s", p, en(e));
}

static void a_list_dir(void) {
  const char* p = arg(0);
  DIR* d = opendir(p);
  if (!d) blocked("opendir %s: %s", p, en(errno));
  int n = 0;
  char first[256] = "";
  struct dirent* de;
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
      if (!n) snprintf(first, sizeof first, "%s", de->d_name);
      n++;
    }
  closedir(d);
  if (n) escaped("%s lists %d entries (e.g. %s)", p, n, first);
  blocked("%s is empty (masked)", p);
}

/* Read a value and write the same bytes back. */
static void a_write_back(void) {
  const char* p = arg(0);
  int fd = open(p, O_RDWR);
  if (fd < 0) blocked("open %s O_RDWR: %s", p, en(errno));
  char buf[512];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n <= 0) {
    close(fd);
    blocked("read %s: %s", p, n == 0 ? "empty" : en(errno));
  }
  if (lseek(fd, 0, SEEK_SET) < 0 && errno != ESPIPE) { /* sysctl files seek fine */
  }
  ssize_t w = pwrite(fd, buf, (size_t)n, 0);
  int e = errno;
  close(fd);
  if (w == n) escaped("wrote %s (the value just read, %zd bytes)", p, n);
  blocked("write back to %s: %s", p, w < 0 ? en(e) : "short write");
}

/* Open for writing only; never written. */
static void a_open_write(void) {
  const char* p = arg(0);
  int fd = open(p, O_WRONLY);
  if (fd < 0) blocked("open %s O_WRONLY: %s", p, en(errno));
  close(fd);
  escaped("opened %s for writing (nothing written)", p);
}

static int own_cgroup_dirs(char dirs[][256], int max) {
  /* Directories under /sys/fs/cgroup where this process's cgroup lives. */
  FILE* f = fopen("/proc/self/cgroup", "r");
  if (!f) return 0;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f) && n < max) {
    line[strcspn(line, "\n")] = 0;
    char* c1 = strchr(line, ':');
    if (!c1) continue;
    char* c2 = strchr(c1 + 1, ':');
    if (!c2) continue;
    *c2 = 0;
    const char *ctl = c1 + 1, *path = c2 + 1;
    if (!strncmp(ctl, "name=", 5)) ctl += 5;
    char base[128];
    if (!*ctl) {
      snprintf(base, sizeof base, "/sys/fs/cgroup/unified");
      struct stat st;
      if (stat(base, &st) != 0) snprintf(base, sizeof base, "/sys/fs/cgroup");
    } else {
      char first[64];
      snprintf(first, sizeof first, "%.*s", (int)strcspn(ctl, ","), ctl);
      snprintf(base, sizeof base, "/sys/fs/cgroup/%s", first);
      struct stat st;
      if (stat(base, &st) != 0) snprintf(base, sizeof base, "/sys/fs/cgroup/%s", ctl);
    }
    char full[384];
    snprintf(full, sizeof full, "%s%s", base, strcmp(path, "/") ? path : "");
    struct stat st;
    const char* pick = NULL;
    if (stat(full, &st) == 0 && S_ISDIR(st.st_mode))
      pick = full;
    else if (stat(base, &st) == 0 && S_ISDIR(st.st_mode)) /* cgroup namespace: own cgroup is the root */
      pick = base;
    struct statfs sf;
    /* Only real cgroup filesystems: not the tmpfs a runtime puts at /sys/fs/cgroup. */
    if (pick && statfs(pick, &sf) == 0 && (sf.f_type == 0x27e0eb || sf.f_type == 0x63677270))
      snprintf(dirs[n++], 256, "%s", pick);
  }
  fclose(f);
  return n;
}

static void a_cgroup_mkdir(void) {
  char dirs[16][256];
  int n = own_cgroup_dirs(dirs, 16);
  if (!n) blocked("no cgroup directory of this process is visible under /sys/fs/cgroup");
  char report[900] = "";
  for (int i = 0; i < n; i++) {
    char p[320];
    snprintf(p, sizeof p, "%s/escape-probe-%d", dirs[i], (int)getpid());
    if (mkdir(p, 0755) == 0) {
      rmdir(p);
      escaped("created (and removed) cgroup directory %s", p);
    }
    size_t l = strlen(report);
    snprintf(report + l, sizeof report - l, "%s%s %s", l ? ", " : "", dirs[i], en(errno));
  }
  blocked("mkdir in own cgroups: %s", report);
}

static void a_cgroup_write(void) {
  static const char* files[] = {"pids.max",   "memory.limit_in_bytes",      "memory.max", "cpu.shares",
                                "cpu.weight", "memory.soft_limit_in_bytes", NULL};
  char dirs[16][256];
  int n = own_cgroup_dirs(dirs, 16);
  if (!n) blocked("no cgroup directory of this process is visible under /sys/fs/cgroup");
  char report[900] = "";
  int tried = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; files[j]; j++) {
      char p[320];
      snprintf(p, sizeof p, "%s/%s", dirs[i], files[j]);
      int fd = open(p, O_RDWR);
      if (fd < 0) {
        if (errno == ENOENT) continue;
        tried++;
        size_t l = strlen(report);
        snprintf(report + l, sizeof report - l, "%s%s %s", l ? ", " : "", p, en(errno));
        continue;
      }
      tried++;
      char buf[64];
      ssize_t r = read(fd, buf, sizeof buf);
      ssize_t w = r > 0 ? pwrite(fd, buf, (size_t)r, 0) : -1;
      int e = errno;
      close(fd);
      if (r > 0 && w == r) escaped("wrote %s (the value just read)", p);
      size_t l = strlen(report);
      snprintf(report + l, sizeof report - l, "%s%s write %s", l ? ", " : "", p, en(e));
    }
  if (!tried) blocked("no cgroup control file visible in %d own cgroup dirs", n);
  blocked("%s", report);
}

static void a_release_agent(void) {
  /* The CVE-2022-0492 file: present only at a v1 hierarchy's root. Opened, never written. */
  DIR* d = opendir("/sys/fs/cgroup");
  if (!d) blocked("opendir /sys/fs/cgroup: %s", en(errno));
  struct dirent* de;
  char report[900] = "";
  int seen = 0;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[320];
    snprintf(p, sizeof p, "/sys/fs/cgroup/%s/release_agent", de->d_name);
    int fd = open(p, O_WRONLY);
    if (fd >= 0) {
      close(fd);
      closedir(d);
      escaped("opened %s for writing (nothing written)", p);
    }
    if (errno == ENOENT) continue;
    seen++;
    size_t l = strlen(report);
    snprintf(report + l, sizeof report - l, "%s%s %s", l ? ", " : "", de->d_name, en(errno));
  }
  closedir(d);
  if (!seen) blocked("no release_agent file visible under /sys/fs/cgroup");
  blocked("release_agent: %s", report);
}

/* ---------------------------------------------------------------- devices */

static void a_mknod(void) {
  const char* kind = arg(0);
  int maj = atoi(arg(1)), min = atoi(arg(2));
  const char* dir = scratch_dir();
  if (!dir) dir = "/tmp";
  char p[256];
  snprintf(p, sizeof p, "%s/escape-node-%d", dir, (int)getpid());
  mode_t m = (kind[0] == 'b' ? S_IFBLK : S_IFCHR) | 0600;
  if (mknod(p, m, makedev(maj, min)) != 0)
    blocked("mknod %s %d:%d in %s: %s", kind, maj, min, dir, en(errno));
  int fd = open(p, O_RDONLY | O_NONBLOCK);
  int e = errno;
  if (fd >= 0) close(fd);
  unlink(p);
  escaped("created %s device node %d:%d (open for read: %s)", kind[0] == 'b' ? "block" : "char", maj, min,
          fd >= 0 ? "allowed" : en(e));
}

/* Open an existing device path, or create it with mknod, then open for read. */
static void a_dev_open(void) {
  const char* path = arg(0);
  int maj = atoi(arg(1)), min = atoi(arg(2));
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  if (fd >= 0) {
    close(fd);
    escaped("opened %s for reading", path);
  }
  int e1 = errno;
  const char* dir = scratch_dir();
  if (!dir) blocked("open %s: %s; no writable directory for mknod", path, en(e1));
  char p[256];
  snprintf(p, sizeof p, "%s/escape-dev-%d", dir, (int)getpid());
  if (mknod(p, S_IFCHR | 0600, makedev(maj, min)) != 0)
    blocked("open %s: %s; mknod c %d:%d: %s", path, en(e1), maj, min, en(errno));
  fd = open(p, O_RDONLY | O_NONBLOCK);
  int e2 = errno;
  unlink(p);
  if (fd >= 0) {
    close(fd);
    escaped("created c %d:%d with mknod and opened it for reading", maj, min);
  }
  blocked("open %s: %s; mknod ok but open: %s", path, en(e1), en(e2));
}

/* ---------------------------------------------------------------- syscalls */

static void a_keyctl(void) {
  long k = syscall(SYS_add_key, "user", "agentshim-escape-probe", "x", 1, KEY_SPEC_SESSION_KEYRING);
  if (k < 0) blocked("add_key to the session keyring: %s", en(errno));
  syscall(SYS_keyctl, KEYCTL_INVALIDATE, k);
  escaped("add_key created key %ld in the session keyring (invalidated again)", k);
}

static void a_bpf_prog(void) {
  struct bpf_insn insns[2] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
      {.code = BPF_JMP | BPF_EXIT},
  };
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
  a.insn_cnt = 2;
  a.insns = (uint64_t)(uintptr_t)insns;
  a.license = (uint64_t)(uintptr_t) "GPL";
  long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
  if (fd < 0) blocked("bpf(BPF_PROG_LOAD socket filter): %s", en(errno));
  close((int)fd);
  escaped("loaded an eBPF socket filter program");
}

static void a_bpf_map(void) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_ARRAY;
  a.key_size = 4;
  a.value_size = 4;
  a.max_entries = 1;
  long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a);
  if (fd < 0) blocked("bpf(BPF_MAP_CREATE): %s", en(errno));
  close((int)fd);
  escaped("created an eBPF map");
}

/* The host's shared BPF state (the exec-argv program's maps, pinned in
 * /sys/fs/bpf/agentshim/ and holding every container's announcements and
 * ring buffers): by pin path, and by id (the kernel's ids are host-wide and
 * small, tried from 1). */
static void a_bpf_host_maps(void) {
  const char* pins[] = {"/sys/fs/bpf/agentshim", "/sys/fs/bpf"};
  char first[160] = "";
  for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
    DIR* d = opendir(pins[i]);
    struct dirent* e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[512];
      snprintf(path, sizeof path, "%s/%s/expect", pins[i], e->d_name);
      union bpf_attr a;
      memset(&a, 0, sizeof a);
      a.pathname = (uint64_t)(uintptr_t)path;
      long fd = syscall(SYS_bpf, BPF_OBJ_GET, &a, sizeof a);
      if (fd >= 0) escaped("opened the host's pinned map %s", path);
      if (!first[0]) snprintf(first, sizeof first, "BPF_OBJ_GET %s: %s", path, en(errno));
    }
    if (d) closedir(d);
  }
  for (uint32_t id = 1; id <= 256; id++) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_id = id;
    long fd = syscall(SYS_bpf, BPF_MAP_GET_FD_BY_ID, &a, sizeof a);
    if (fd >= 0) escaped("got a descriptor of the host's BPF map id %u", id);
    if (id == 1) snprintf(first + strlen(first), sizeof first - strlen(first), "%sBPF_MAP_GET_FD_BY_ID: %s",
                          first[0] ? "; " : "", en(errno));
  }
  blocked("no pin reachable, no map by id (%s)", first);
}

static void a_perf_event_open(void) {
  struct perf_event_attr pe;
  memset(&pe, 0, sizeof pe);
  pe.type = PERF_TYPE_SOFTWARE;
  pe.size = sizeof pe;
  pe.config = PERF_COUNT_SW_TASK_CLOCK;
  pe.disabled = 1;
  pe.exclude_kernel = 1;
  pe.exclude_hv = 1;
  long fd = syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0);
  if (fd < 0) blocked("perf_event_open(software task clock on self): %s", en(errno));
  close((int)fd);
  escaped("perf_event_open gave a counter fd");
}

static void a_userfaultfd(void) {
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC);
  int e1 = errno;
  if (fd >= 0) {
    close((int)fd);
    escaped("userfaultfd() returned an fd (kernel faults too)");
  }
  fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
  if (fd >= 0) {
    close((int)fd);
    escaped("userfaultfd(UFFD_USER_MODE_ONLY) returned an fd (plain: %s)", en(e1));
  }
  blocked("userfaultfd: %s; user-mode-only: %s", en(e1), en(errno));
}

static void a_io_uring(void) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  long fd = syscall(SYS_io_uring_setup, 4, &p);
  if (fd < 0) blocked("io_uring_setup: %s", en(errno));
  close((int)fd);
  escaped("io_uring_setup returned a ring fd");
}

static void a_personality(void) {
  int old = personality(0xffffffff);
  int r = personality(READ_IMPLIES_EXEC);
  int e = errno;
  if (r != -1) {
    int now = personality(0xffffffff);
    personality((unsigned long)old);
    if (now & READ_IMPLIES_EXEC) escaped("personality(READ_IMPLIES_EXEC) took effect");
    blocked("personality(READ_IMPLIES_EXEC) returned but did not take effect (%#x)", now);
  }
  blocked("personality(READ_IMPLIES_EXEC): %s", en(e));
}

static void a_modify_ldt(void) {
  static char buf[64];
  long r = syscall(SYS_modify_ldt, 0, buf, sizeof buf);
  if (r < 0) blocked("modify_ldt(read): %s", en(errno));
  escaped("modify_ldt is callable (read returned %ld)", r);
}

static void a_syslog(void) {
  static char buf[256];
  long r = syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, buf, (int)sizeof buf);
  if (r < 0) blocked("syslog(READ_ALL): %s", en(errno));
  escaped("syslog(READ_ALL) read %ld bytes of the kernel log", r);
}

static void a_sysctl_syscall(void) {
  struct {
    int* name;
    int nlen;
    void* oldval;
    size_t* oldlenp;
    void* newval;
    size_t newlen;
    unsigned long unused[4];
  } args;
  int name[2] = {1 /* CTL_KERN */, 1 /* KERN_OSTYPE */};
  char val[64];
  size_t len = sizeof val;
  memset(&args, 0, sizeof args);
  args.name = name;
  args.nlen = 2;
  args.oldval = val;
  args.oldlenp = &len;
  long r = syscall(156 /* _sysctl, x86_64 */, &args);
  if (r < 0) blocked("_sysctl(2) read of kern.ostype: %s", en(errno));
  escaped("_sysctl(2) is available (read %zu bytes)", len);
}

static void a_swapon(void) {
  long r = syscall(SYS_swapon, "/agentshim-escape-no-such-swapfile", 0);
  int e = errno;
  if (r == 0) escaped("swapon succeeded");
  if (e == EPERM || e == ENOSYS) blocked("swapon: %s", en(e));
  escaped("swapon passed the capability check (%s: CAP_SYS_ADMIN held)", en(e));
}

static void a_acct(void) {
  long r = syscall(SYS_acct, "/agentshim-escape-no-such-dir/acct");
  int e = errno;
  if (r == 0) escaped("acct succeeded");
  if (e == EPERM || e == ENOSYS) blocked("acct: %s", en(e));
  escaped("acct passed the capability check (%s: CAP_SYS_PACCT held)", en(e));
}

static void a_kexec_file_load(void) {
  long r = syscall(SYS_kexec_file_load, -1, -1, 1, "", 0);
  int e = errno;
  if (r == 0) escaped("kexec_file_load succeeded");
  if (e == EPERM || e == ENOSYS) blocked("kexec_file_load: %s", en(e));
  escaped("kexec_file_load passed the capability check (%s: CAP_SYS_BOOT held)", en(e));
}

static void a_ioperm(void) {
  if (ioperm(0x80, 1, 1) == 0) {
    ioperm(0x80, 1, 0);
    escaped("ioperm granted access to I/O port 0x80 (revoked again)");
  }
  int e = errno;
  if (syscall(SYS_iopl, 0) == 0) blocked("ioperm(0x80): %s (iopl(0) allowed; it grants nothing)", en(e));
  blocked("ioperm(0x80): %s; iopl(0): %s", en(e), en(errno));
}

static void a_open_by_handle_at(void) {
  struct {
    struct file_handle fh;
    unsigned char buf[MAX_HANDLE_SZ];
  } h;
  h.fh.handle_bytes = MAX_HANDLE_SZ;
  int mnt = -1;
  if (name_to_handle_at(AT_FDCWD, "/", &h.fh, &mnt, 0) != 0) blocked("name_to_handle_at(/): %s", en(errno));
  int root = open("/", O_RDONLY | O_DIRECTORY);
  if (root < 0) error_out("open /: %s", en(errno));
  int fd = open_by_handle_at(root, &h.fh, O_RDONLY | O_DIRECTORY);
  if (fd < 0) blocked("open_by_handle_at(handle of /): %s", en(errno));
  close(fd);
  /* The shocker step: forge a handle for inode 2 (the filesystem's root on
   * ext4), which lies outside the container's root directory. */
  char extra[96] = "";
  if (h.fh.handle_type == 1 /* FILEID_INO32_GEN */ && h.fh.handle_bytes >= 8) {
    uint32_t ino = 2, gen = 0;
    memcpy(h.buf, &ino, 4);
    memcpy(h.buf + 4, &gen, 4);
    int fd2 = open_by_handle_at(root, &h.fh, O_RDONLY | O_DIRECTORY);
    snprintf(extra, sizeof extra, "; forged inode-2 handle: %s",
             fd2 >= 0 ? "opened the filesystem root" : en(errno));
    if (fd2 >= 0) close(fd2);
  }
  close(root);
  escaped("open_by_handle_at opened an inode by handle (CAP_DAC_READ_SEARCH)%s", extra);
}

/* ---------------------------------------------------------------- 32-bit / x32 ABI */

static long int80(long nr, long a1, long a2, long a3, long a4, long a5) {
  long ret;
  __asm__ volatile("push %%rbp\n\tint $0x80\n\tpop %%rbp"
                   : "=a"(ret)
                   : "a"(nr), "b"(a1), "c"(a2), "d"(a3), "S"(a4), "D"(a5)
                   : "memory", "r8", "r9", "r10", "r11", "cc");
  return ret;
}

static struct io_uring_params low_params; /* static: below 4 GiB in a non-PIE static binary */
static char low_str_tmpfs[] = "tmpfs";
static char low_str_tmp[] = "/tmp";
static char low_str_user[] = "user";
static char low_str_desc[] = "agentshim-escape-probe-i386";
static char low_str_x[] = "x";

static void i386_result(const char* what, long r) {
  if (r >= 0) escaped("i386 int $0x80 %s succeeded (returned %ld)", what, r);
  if (r == -ENOSYS) blocked("i386 int $0x80 %s: ENOSYS (compat ABI not usable)", what);
  blocked("i386 int $0x80 %s: %s", what, en((int)-r));
}

static void a_i386(void) {
  const char* what = arg(0);
  if ((uintptr_t)&low_params > 0xffffffffu) error_out("static data above 4 GiB; build with -static -no-pie");
  if (!strcmp(what, "unshare_user")) {
    long r = int80(310, CLONE_NEWUSER, 0, 0, 0, 0);
    i386_result("unshare(CLONE_NEWUSER)", r);
  } else if (!strcmp(what, "unshare_mnt")) {
    i386_result("unshare(CLONE_NEWNS)", int80(310, CLONE_NEWNS, 0, 0, 0, 0));
  } else if (!strcmp(what, "mount")) {
    long r = int80(21, (long)(uintptr_t)low_str_tmpfs, (long)(uintptr_t)low_str_tmp,
                   (long)(uintptr_t)low_str_tmpfs, 0, 0);
    if (r == 0) umount2("/tmp", MNT_DETACH);
    i386_result("mount(tmpfs)", r);
  } else if (!strcmp(what, "io_uring_setup")) {
    long r = int80(425, 4, (long)(uintptr_t)&low_params, 0, 0, 0);
    if (r >= 0) close((int)r);
    i386_result("io_uring_setup", r);
  } else if (!strcmp(what, "userfaultfd")) {
    long r = int80(374, O_CLOEXEC | UFFD_USER_MODE_ONLY, 0, 0, 0, 0);
    if (r >= 0) close((int)r);
    i386_result("userfaultfd(UFFD_USER_MODE_ONLY)", r);
  } else if (!strcmp(what, "add_key")) {
    long r = int80(286, (long)(uintptr_t)low_str_user, (long)(uintptr_t)low_str_desc,
                   (long)(uintptr_t)low_str_x, 1, KEY_SPEC_SESSION_KEYRING);
    if (r >= 0) syscall(SYS_keyctl, KEYCTL_INVALIDATE, r);
    i386_result("add_key", r);
  } else if (!strcmp(what, "personality")) {
    int old = personality(0xffffffff);
    long r = int80(136, READ_IMPLIES_EXEC, 0, 0, 0, 0);
    int now = personality(0xffffffff);
    personality((unsigned long)old);
    if (r >= 0 && !(now & READ_IMPLIES_EXEC)) blocked("i386 personality returned but did not take effect");
    i386_result("personality(READ_IMPLIES_EXEC)", r);
  } else {
    error_out("unknown i386 attack %s", what);
  }
}

static void a_x32(void) {
  const char* what = arg(0);
  long r;
  int e;
  if (!strcmp(what, "unshare_user")) {
    r = syscall(X32_BIT | SYS_unshare, CLONE_NEWUSER);
  } else if (!strcmp(what, "io_uring_setup")) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r = syscall(X32_BIT | SYS_io_uring_setup, 4, &p);
    if (r >= 0) close((int)r);
  } else if (!strcmp(what, "mount")) {
    r = syscall(X32_BIT | SYS_mount, "tmpfs", "/tmp", "tmpfs", 0, "size=1m");
    if (r == 0) umount2("/tmp", MNT_DETACH);
  } else {
    error_out("unknown x32 attack %s", what);
  }
  e = errno;
  if (r >= 0) escaped("x32 syscall (__X32_SYSCALL_BIT|%s) succeeded", what);
  if (e == ENOSYS) blocked("x32 %s: ENOSYS (x32 ABI not available or filtered)", what);
  blocked("x32 %s: %s", what, en(e));
}

/* ---------------------------------------------------------------- privileges through exec */

static void a_whoami(void) {
  printf("euid=%d uid=%d\n", (int)geteuid(), (int)getuid());
  fflush(stdout);
  _exit(0);
}

static void a_setuid_exec(void) {
  const char* suid = arg(0);
  if (geteuid() == 0) error_out("run this attack as a non-root user");
  int p[2];
  if (pipe(p) < 0) error_out("pipe: %s", en(errno));
  pid_t c = fork();
  if (c == 0) {
    close(p[0]);
    dup2(p[1], 1);
    execl(suid, suid, "whoami", (char*)NULL);
    dprintf(1, "exec:%s\n", en(errno));
    _exit(4);
  }
  close(p[1]);
  char out[128] = {0};
  ssize_t n = read(p[0], out, sizeof out - 1);
  waitpid(c, NULL, 0);
  if (n <= 0) error_out("setuid child printed nothing");
  out[strcspn(out, "\n")] = 0;
  if (!strncmp(out, "exec:", 5)) blocked("exec %s: %s", suid, out + 5);
  if (!strncmp(out, "euid=0", 6)) escaped("setuid-root binary gave %s to uid %d", out, (int)getuid());
  blocked("setuid-root binary ran with %s (no_new_privs or nosuid)", out);
}

static void a_raw_socket_report(void) {
  /* Run via the file-capability copy: report whether CAP_NET_RAW came with it. */
  int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (s >= 0) {
    close(s);
    escaped("uid %d opened a raw socket through the binary's file capability", (int)getuid());
  }
  blocked("uid %d: raw socket: %s (file capability not honoured)", (int)getuid(), en(errno));
}

static void a_fcap_exec(void) {
  const char* bin = arg(0);
  if (geteuid() == 0) error_out("run this attack as a non-root user");
  execl(bin, bin, "raw_socket_report", (char*)NULL);
  blocked("exec %s: %s", bin, en(errno));
}

/* ---------------------------------------------------------------- chroot and exe */

static void a_chroot_escape(void) {
  struct stat before;
  if (stat("/", &before) != 0) error_out("stat /: %s", en(errno));
  const char* dir = scratch_dir();
  if (!dir) blocked("no writable directory for the jail (read-only root)");
  char jail[256];
  snprintf(jail, sizeof jail, "%s/escape-jail-%d", dir, (int)getpid());
  if (mkdir(jail, 0700) != 0) error_out("mkdir %s: %s", jail, en(errno));
  int keep = open("/", O_RDONLY | O_DIRECTORY);
  if (chroot(jail) != 0) {
    int e = errno;
    rmdir(jail);
    blocked("chroot(%s): %s", jail, en(e));
  }
  rmdir(jail); /* still usable: only the name goes */
  if (fchdir(keep) != 0) error_out("fchdir: %s", en(errno));
  for (int i = 0; i < 64; i++)
    if (chdir("..") != 0) break;
  if (chroot(".") != 0) blocked("second chroot(.): %s", en(errno));
  struct stat after;
  stat("/", &after);
  struct stat cfg;
  int bundle = stat("/config.json", &cfg) == 0 || stat("/rootfs/bin/busybox", &cfg) == 0;
  if (bundle || after.st_ino != before.st_ino || after.st_dev != before.st_dev)
    escaped("chroot breakout reached a directory above the container root (%s)",
            bundle ? "sees the bundle's config.json/rootfs" : "different root inode");
  blocked("chroot breakout only reaches the container's own root (pivot_root, no way above it)");
}

static void a_self_exe_write(void) {
  int fd = open("/proc/self/exe", O_WRONLY);
  if (fd >= 0) {
    close(fd);
    escaped("opened /proc/self/exe for writing (nothing written)");
  }
  blocked("open /proc/self/exe O_WRONLY: %s", en(errno));
}

/* runtime_exe DEV INO SECONDS: the CVE-2019-5736 shape. Watch /proc for
 * processes the runtime starts in the container (exec), grab /proc/<pid>/exe
 * with O_PATH and check whether it is the runtime's host binary (dev:ino given
 * by the test), then keep trying to reopen it for writing through
 * /proc/self/fd. Nothing is ever written. */
static unsigned long long rx_dev, rx_ino;
static int rx_held[64], rx_held_pid[64], rx_nheld, rx_maxpid;
static char rx_seen[512];

/* Open /proc/<pid>/exe with O_PATH; keep it if it is the runtime's binary. */
static void rx_probe(int pid) {
  for (int i = 0; i < rx_nheld; i++)
    if (rx_held_pid[i] == pid) return;
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/exe", pid);
  int fd = open(p, O_PATH | O_CLOEXEC);
  if (fd < 0) return;
  if (pid > rx_maxpid) rx_maxpid = pid;
  struct stat st;
  if (fstat(fd, &st) == 0 && st.st_dev == rx_dev && st.st_ino == rx_ino && rx_nheld < 64) {
    rx_held_pid[rx_nheld] = pid;
    rx_held[rx_nheld++] = fd;
    return;
  }
  char link[128] = "";
  ssize_t n = readlink(p, link, sizeof link - 1);
  if (n > 0 && !strstr(rx_seen, link) && strlen(rx_seen) + (size_t)n + 3 < sizeof rx_seen) {
    strcat(rx_seen, rx_seen[0] ? ", " : "");
    strcat(rx_seen, link);
  }
  close(fd);
}

static void a_runtime_exe(void) {
  rx_dev = strtoull(arg(0), NULL, 10);
  rx_ino = strtoull(arg(1), NULL, 10);
  int secs = atoi(arg(2));
  struct timespec t0, now, last_scan = {0, 0};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  char last_err[64] = "none";
  pid_t me = getpid();
  rx_maxpid = me;
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - t0.tv_sec >= secs) break;
    /* The runtime's exec process gets the next pids of the namespace: poll
     * those in a tight loop, and rescan all of /proc every 20 ms. */
    for (int pid = rx_maxpid + 1; pid <= rx_maxpid + 4; pid++) rx_probe(pid);
    long since = (now.tv_sec - last_scan.tv_sec) * 1000 + (now.tv_nsec - last_scan.tv_nsec) / 1000000;
    if (since < 20) continue;
    last_scan = now;
    DIR* d = opendir("/proc");
    if (!d) error_out("opendir /proc: %s", en(errno));
    struct dirent* de;
    while ((de = readdir(d))) {
      int pid = atoi(de->d_name);
      if (pid <= 1 || pid == me || pid == getppid()) continue;
      rx_probe(pid);
    }
    closedir(d);
    for (int i = 0; i < rx_nheld; i++) {
      char p[64];
      snprintf(p, sizeof p, "/proc/self/fd/%d", rx_held[i]);
      int w = open(p, O_WRONLY | O_CLOEXEC);
      if (w >= 0) {
        close(w);
        escaped(
            "got a handle on the host runtime binary via /proc/%d/exe and reopened it for writing "
            "(nothing written)",
            rx_held_pid[i]);
      }
      snprintf(last_err, sizeof last_err, "%s", en(errno));
    }
  }
  if (rx_nheld)
    blocked(
        "held the host runtime binary through /proc/<pid>/exe of %d process(es) but reopening it for writing "
        "failed: %s",
        rx_nheld, last_err);
  blocked("no process exposed the host runtime binary (exes seen: %s)", rx_seen[0] ? rx_seen : "none");
}

/* ---------------------------------------------------------------- resources */

static long read_long_file(const char* p) {
  char buf[64] = {0};
  int fd = open(p, O_RDONLY);
  if (fd < 0) return -2;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -2;
  if (!strncmp(buf, "max", 3)) return -1;
  return strtol(buf, NULL, 10);
}

static void a_fork_bomb(void) {
  int cap = atoi(arg(0));
  static pid_t kids[4096];
  if (cap > 4096) cap = 4096;
  int n = 0, e = 0;
  while (n < cap) {
    pid_t c = fork();
    if (c < 0) {
      e = errno;
      break;
    }
    if (c == 0) {
      for (;;) pause();
    }
    kids[n++] = c;
  }
  long pmax = read_long_file("/sys/fs/cgroup/pids/pids.max");
  if (pmax == -2) pmax = read_long_file("/sys/fs/cgroup/pids.max");
  for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
  for (int i = 0; i < n; i++) waitpid(kids[i], NULL, 0);
  char lim[48];
  snprintf(lim, sizeof lim, pmax == -2 ? "unreadable" : pmax == -1 ? "max" : "%ld", pmax);
  if (n < cap) blocked("fork failed with %s after %d children (pids.max seen inside: %s)", en(e), n, lim);
  if (pmax >= 0)
    blocked(
        "reached the test's cap of %d children below the cgroup's pids.max of %ld (a limit holds, above the "
        "cap)",
        n, pmax);
  escaped("forked %d children without hitting a limit (pids.max seen inside: %s; stopped at the test's cap)",
          n, lim);
}

static void a_memory_hog(void) {
  long cap_mib = atol(arg(0));
  int p[2];
  if (pipe(p) < 0) error_out("pipe: %s", en(errno));
  pid_t c = fork();
  if (c == 0) {
    close(p[0]);
    for (long i = 0; i < cap_mib / 8; i++) {
      char* m = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) {
        dprintf(p[1], "mmap:%s:%ld\n", en(errno), i * 8);
        _exit(3);
      }
      for (long j = 0; j < (8 << 20); j += 4096) m[j] = 1;
      char b = 1;
      if (write(p[1], &b, 1) != 1) _exit(4);
    }
    _exit(0);
  }
  close(p[1]);
  long chunks = 0;
  char b;
  char tail[128] = {0};
  ssize_t n;
  while ((n = read(p[0], &b, 1)) == 1) {
    if (b != 1) {
      tail[0] = b;
      ssize_t m = read(p[0], tail + 1, sizeof tail - 2);
      (void)m;
      break;
    }
    chunks++;
  }
  int st;
  waitpid(c, &st, 0);
  if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
    blocked("hog killed by SIGKILL (OOM in its cgroup) after %ld MiB", chunks * 8);
  if (tail[0]) blocked("allocation failed: %s", tail);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    long lim = read_long_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    if (lim == -2) lim = read_long_file("/sys/fs/cgroup/memory.max");
    if (lim >= 0 && lim < (1L << 60))
      blocked(
          "allocated the test's cap of %ld MiB below the cgroup's memory limit of %ld MiB (a limit holds, "
          "above the cap)",
          chunks * 8, lim >> 20);
    escaped("allocated and touched %ld MiB without being stopped (memory limit seen inside: %s)", chunks * 8,
            lim == -2 ? "unreadable" : "none");
  }
  error_out("hog ended with status %#x after %ld MiB", st, chunks * 8);
}

static void a_tmpfs_fill(void) {
  const char* dir = arg(0);
  long cap_mib = atol(arg(1));
  char p[256];
  snprintf(p, sizeof p, "%s/escape-fill-%d", dir, (int)getpid());
  int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) error_out("open %s: %s", p, en(errno));
  static char chunk[1 << 20];
  memset(chunk, 'x', sizeof chunk);
  long mib = 0;
  int e = 0;
  while (mib < cap_mib) {
    ssize_t w = write(fd, chunk, sizeof chunk);
    if (w != (ssize_t)sizeof chunk) {
      e = w < 0 ? errno : ENOSPC;
      break;
    }
    mib++;
  }
  struct statfs sf;
  long size_mib = fstatfs(fd, &sf) == 0 ? (long)((sf.f_blocks * (unsigned long long)sf.f_bsize) >> 20) : -1;
  close(fd);
  unlink(p);
  if (mib < cap_mib)
    blocked("write stopped with %s after %ld MiB (tmpfs size %ld MiB)", en(e), mib, size_mib);
  long dflt = g_argc > 4 ? atol(arg(2)) : -1;
  if (dflt > 0 && size_mib > 0 && size_mib < dflt * 9 / 10)
    blocked("wrote the test's cap of %ld MiB; the tmpfs has a size limit of %ld MiB (kernel default %ld MiB)",
            mib, size_mib, dflt);
  escaped("wrote %ld MiB into %s without ENOSPC (tmpfs size %ld MiB: no size limit)", mib, dir, size_mib);
}

/* ---------------------------------------------------------------- secrets and the supervisor */

/* find_paths PATH...: ESCAPED if any given host path (audit dir, key) or the
 * same path under /proc/<pid>/root is visible in the container. */
static void a_find_paths(void) {
  char found[512] = "";
  for (int i = 2; i < g_argc; i++) {
    const char* p = g_argv[i];
    struct stat st;
    if (stat(p, &st) == 0) {
      size_t l = strlen(found);
      snprintf(found + l, sizeof found - l, "%s%s", l ? ", " : "", p);
    }
    DIR* d = opendir("/proc");
    if (!d) continue;
    struct dirent* de;
    while ((de = readdir(d))) {
      if (atoi(de->d_name) <= 0) continue;
      char q[512];
      snprintf(q, sizeof q, "/proc/%s/root%s", de->d_name, p);
      if (stat(q, &st) == 0) {
        size_t l = strlen(found);
        snprintf(found + l, sizeof found - l, "%s%s", l ? ", " : "", q);
      }
    }
    closedir(d);
  }
  if (found[0]) escaped("visible inside the container: %s", found);
  blocked("none of %d audit/key paths is visible, directly or via /proc/*/root", g_argc - 2);
}

/* find_bytes ROOT REVERSED-NEEDLE...: ESCAPED if any needle is in a regular
 * file under ROOT (not /proc, /sys, /dev; at most 64 MiB read per file, 200000
 * files), or in the environment or command line of any other visible
 * process. Each needle is given reversed, so the command line (and this
 * process) never holds it. Used for the run CA's private key and a
 * credential's secret (TLS interception). */
static char* fb_needles[16];
static int fb_n;

static int fb_match(const char* buf, size_t n, int first, const char** which) {
  (void)first;
  for (int i = 0; i < fb_n; i++) {
    size_t l = strlen(fb_needles[i]);
    if (l && n >= l && memmem(buf, n, fb_needles[i], l)) {
      *which = "a needle";
      return 1;
    }
  }
  return 0;
}

static int fb_file(const char* path, const char** which) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return 0;
  }
  static char buf[1 << 20];
  size_t keep = 0, total = 0;
  int hit = 0;
  for (;;) {
    ssize_t r = read(fd, buf + keep, sizeof buf - keep);
    if (r <= 0) break;
    size_t n = keep + (size_t)r;
    total += (size_t)r;
    if (fb_match(buf, n, 3, which)) {
      hit = 1;
      break;
    }
    keep = n < 256 ? n : 256; /* needles are shorter: keep a tail for matches across reads */
    memmove(buf, buf + n - keep, keep);
    if (total > (64u << 20)) break;
  }
  close(fd);
  return hit;
}

static long fb_files;
static int fb_walk(const char* dir, char* found, size_t cap) {
  DIR* d = opendir(dir);
  if (!d) return 0;
  struct dirent* de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", strcmp(dir, "/") ? dir : "", de->d_name);
    if (!strcmp(p, "/proc") || !strcmp(p, "/sys") || !strcmp(p, "/dev")) continue;
    if (++fb_files > 200000) break;
    struct stat st;
    if (lstat(p, &st) != 0) continue;
    const char* which = NULL;
    if (S_ISDIR(st.st_mode)) {
      if (fb_walk(p, found, cap)) {
        closedir(d);
        return 1;
      }
    } else if (S_ISREG(st.st_mode) && fb_file(p, &which)) {
      snprintf(found, cap, "%s holds %s", p, which);
      closedir(d);
      return 1;
    }
  }
  closedir(d);
  return 0;
}

static void a_find_bytes(void) {
  if (g_argc < 4) error_out("usage: find_bytes ROOT REVERSED-NEEDLE...");
  for (int i = 3; i < g_argc && fb_n < 16; i++) {
    size_t l = strlen(g_argv[i]);
    char* nd = malloc(l + 1);
    for (size_t k = 0; k < l; k++) nd[k] = g_argv[i][l - 1 - k];
    nd[l] = 0;
    fb_needles[fb_n++] = nd;
  }
  char found[4600] = "";
  if (fb_walk(g_argv[2], found, sizeof found)) escaped("%s", found);
  DIR* d = opendir("/proc");
  struct dirent* de;
  while (d && (de = readdir(d))) {
    if (atoi(de->d_name) <= 0 || atoi(de->d_name) == getpid()) continue;
    for (int k = 0; k < 2; k++) {
      char p[300];
      snprintf(p, sizeof p, "/proc/%s/%s", de->d_name, k ? "cmdline" : "environ");
      const char* which = NULL;
      if (fb_file(p, &which)) escaped("%s holds %s", p, which);
    }
  }
  if (d) closedir(d);
  blocked("none of %d needles in %ld files under %s or any visible process's environment or command line",
          g_argc - 3, fb_files, g_argv[2]);
}

/* Spawn two children of our own, then SIGKILL every visible pid except self
 * and 1, then kill(-1). ESCAPED if any victim was not one of ours (a runtime
 * or supervisor process visible in the pid namespace). */
static void a_kill_all(void) {
  /* Never in the host's pid namespace: kill(-1) there would kill the machine. */
  if (in_host_ns("pid", arg(0))) escaped("shares the host's pid namespace (nothing killed)");
  pid_t own[2];
  for (int i = 0; i < 2; i++) {
    own[i] = fork();
    if (own[i] == 0) {
      for (;;) pause();
    }
  }
  usleep(50000);
  char foreign[512] = "";
  int killed = 0;
  DIR* d = opendir("/proc");
  if (!d) error_out("opendir /proc: %s", en(errno));
  struct dirent* de;
  pid_t me = getpid();
  while ((de = readdir(d))) {
    int pid = atoi(de->d_name);
    if (pid <= 1 || pid == me) continue;
    char p[64], exe[128] = "?";
    snprintf(p, sizeof p, "/proc/%d/exe", pid);
    ssize_t n = readlink(p, exe, sizeof exe - 1);
    if (n > 0) exe[n] = 0;
    int ours = pid == own[0] || pid == own[1];
    if (kill(pid, SIGKILL) == 0) killed++;
    if (!ours) {
      size_t l = strlen(foreign);
      snprintf(foreign + l, sizeof foreign - l, "%s%d(%s)", l ? ", " : "", pid, exe);
    }
  }
  closedir(d);
  int r = kill(-1, SIGKILL);
  int e = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  if (foreign[0]) escaped("processes outside the workload are visible and were sent SIGKILL: %s", foreign);
  blocked("only the attacker's own processes are visible (%d killed; kill(-1): %s)", killed,
          r == 0 ? "ok" : en(e));
}

static void a_sethostname(void) {
  if (in_host_ns("uts", arg(0))) escaped("shares the host's UTS namespace (sethostname not attempted)");
  struct stat st;
  if (stat("/proc/self/ns/uts", &st) != 0) error_out("stat /proc/self/ns/uts: %s", en(errno));
  char old[256] = {0};
  gethostname(old, sizeof old - 1);
  if (sethostname("escape-probe", 12) != 0)
    blocked("sethostname: %s (private UTS namespace %llu)", en(errno), (unsigned long long)st.st_ino);
  sethostname(old, strlen(old));
  blocked("contained: sethostname changed only the container's own UTS namespace");
}

static void a_hello(void) {
  blocked("the helper runs (uid %d, euid %d)", (int)getuid(), (int)geteuid());
}

static void a_pause(void) {
  int secs = atoi(arg(0));
  sleep((unsigned)secs);
  blocked("paused %d s", secs);
}

/* ---------------------------------------------------------------- the operator's terminal */

/* The terminals within reach: /dev/tty (the controlling terminal, if the
 * process still has the caller's session) and any of fds 0-2 that is a tty
 * (inherited stdio). Returns how many fds it filled. */
static int terminals(int* fds, const char** names, char* why, size_t whylen) {
  int n = 0;
  int t = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (t >= 0) {
    fds[n] = t;
    names[n++] = "/dev/tty";
  } else {
    snprintf(why, whylen, "open /dev/tty: %s", en(errno));
  }
  static const char* std_names[] = {"fd 0", "fd 1", "fd 2"};
  for (int fd = 0; fd < 3; fd++)
    if (isatty(fd)) {
      fds[n] = fd;
      names[n++] = std_names[fd];
    }
  return n;
}

/* TIOCSTI: push MARKER and a newline into the terminal's input queue: the
 * operator's shell would read and run it after the runtime returns. The
 * test reads the queue back from the outside (nothing runs). */
static void a_tty_inject(void) {
  const char* marker = arg(0);
  int fds[4];
  const char* names[4];
  char why[200] = "no terminal";
  int n = terminals(fds, names, why, sizeof why);
  int dev_tty = n > 0 && !strcmp(names[0], "/dev/tty");
  char res[600] = "";
  size_t rl = 0;
  for (int i = 0; i < n; i++) {
    int pushed = 0;
    for (const char* c = marker; *c; c++)
      if (ioctl(fds[i], TIOCSTI, c) == 0) pushed++;
    char nl = '\n';
    int last = ioctl(fds[i], TIOCSTI, &nl);
    int e = errno;
    if (pushed || last == 0)
      escaped("TIOCSTI on %s pushed %d bytes into the operator's terminal", names[i], pushed);
    rl += (size_t)snprintf(res + rl, sizeof res - rl, "%s%s: TIOCSTI %s", rl ? "; " : "", names[i], en(e));
  }
  if (dev_tty) escaped("opened /dev/tty: the caller's controlling terminal (%s)", res);
  blocked("%s; %s", why, n ? res : "no tty among fds 0-2");
}

/* TIOCLINUX with a read-only subcode (6: shift state): reaching it at all
 * means the console ioctls (selection paste, 3) are reachable too. */
static void a_tty_linux(void) {
  int fds[4];
  const char* names[4];
  char why[200] = "no terminal";
  int n = terminals(fds, names, why, sizeof why);
  char res[600] = "";
  size_t rl = 0;
  for (int i = 0; i < n; i++) {
    char sub[2] = {6, 0};
    if (ioctl(fds[i], TIOCLINUX, sub) == 0) escaped("TIOCLINUX reached the terminal on %s", names[i]);
    rl += (size_t)snprintf(res + rl, sizeof res - rl, "%s%s: TIOCLINUX %s", rl ? "; " : "", names[i],
                           en(errno));
  }
  if (n && !strcmp(names[0], "/dev/tty"))
    escaped("opened /dev/tty: the caller's controlling terminal (%s)", res);
  blocked("%s; %s", why, n ? res : "no tty among fds 0-2");
}

/* kill(0, SIGWINCH) and kill(-pgrp, SIGWINCH): to the attacker's process
 * group. If that is still the caller's, a canary process of the caller
 * receives it (the test checks; SIGWINCH is harmless). */
static void a_kill_group(void) {
  pid_t pg = getpgrp(), sid = getsid(0);
  int r0 = kill(0, SIGWINCH);
  int e0 = errno;
  int r1 = pg > 1 ? kill(-pg, SIGWINCH) : -1;
  blocked("sent: kill(0) %s, pgrp %d session %d (the test's canary decides)", r0 == 0 ? "ok" : en(e0),
          (int)pg, (int)sid);
  (void)r1;
}

/* execve of each path given: each is something the exec observer must not
 * open (a FIFO canary, a symlink to /proc/kmsg, a device). The exec itself
 * fails in the kernel (EACCES); what matters is what the supervisor did. */
static void a_exec_nonregular(void) {
  char res[700] = "";
  size_t rl = 0;
  for (int i = 2; i < g_argc; i++) {
    char* av[] = {g_argv[i], NULL};
    pid_t c = fork();
    if (c == 0) {
      execv(g_argv[i], av);
      _exit(100 + (errno & 0x3f));
    }
    int st = 0;
    waitpid(c, &st, 0);
    rl += (size_t)snprintf(res + rl, sizeof res - rl, "%s%s: exec %s", rl ? "; " : "", g_argv[i],
                           WIFEXITED(st) && WEXITSTATUS(st) >= 100 ? en(WEXITSTATUS(st) - 100) : "ran?");
  }
  blocked("%s (the test's canaries decide)", res);
}

/* Exec a program with terminal escape codes in its argv: they end up in
 * the run record, which `runs show` prints. */
static void a_exec_escape_argv(void) {
  char* av[] = {(char*)"/bin/attack", (char*)"hello", (char*)"\x1b[2K\x1b[1A\x1b]0;pwned\x07", (char*)"\xc2\x9b" "8m",
                NULL};
  pid_t c = fork();
  if (c == 0) {
    execv("/bin/attack", av);
    _exit(3);
  }
  int st = 0;
  waitpid(c, &st, 0);
  blocked("exec'd with escape codes in argv (the test reads `runs show`)");
}


/* ---------------------------------------------------------------- record evasion (the exec observer)
 * Each attack below makes the exec observer's job hard and prints BLOCKED;
 * the test decides by comparing the run record with what really ran, which
 * each exec'd program writes to /vol/rec.log ("rec_note": its index, the
 * argument it received, the size of the file it runs from). */

static void append_line(const char* path, const char* line) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, line, strlen(line));
  (void)w;
  close(fd);
}

/* rec_note IDX ARG: what this program received and runs from. */
static void a_rec_note(void) {
  struct stat st;
  char line[512];
  if (stat("/proc/self/exe", &st) < 0) st.st_size = -1;
  snprintf(line, sizeof line, "%s %s %lld\n", arg(0), arg(1), (long long)st.st_size);
  append_line("/vol/rec.log", line);
  _exit(0);
}

static int run_child(const char* path, char* const* av) {
  pid_t c = fork();
  if (c == 0) {
    execv(path, av);
    _exit(100 + (errno & 0x3f));
  }
  int st = 0;
  waitpid(c, &st, 0);
  return st;
}

/* Copy src to dst (mode 0755), adding `extra` bytes of 'X' (a different file). */
static int copy_file(const char* src, const char* dst, int extra) {
  int in = open(src, O_RDONLY | O_CLOEXEC), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (in < 0 || out < 0) return -1;
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) return -1;
  for (int i = 0; i < extra; i++)
    if (write(out, "X", 1) != 1) return -1;
  close(in);
  close(out);
  return 0;
}

static volatile int g_stop;
static char g_argbuf[16] = "benign";
/* Each value held about as long as the other (the kernel's copy of argv
 * sees either, or a mix while one is written); the barriers keep the
 * compiler from dropping a store the next one overwrites. */
static volatile int g_flipping;
static void* flip_arg(void* unused) {
  (void)unused;
  g_flipping = 1;
  while (!g_stop) {
    memcpy(g_argbuf, "EVIL!!", 7);
    __asm__ volatile("" ::: "memory");
    for (volatile int i = 0; i < 2000; i++) {
    }
    memcpy(g_argbuf, "benign", 7);
    __asm__ volatile("" ::: "memory");
    for (volatile int i = 0; i < 2000; i++) {
    }
  }
  return NULL;
}

/* The flipping thread, running before this returns (an execve right after
 * pthread_create would otherwise end it before its first store). */
static void start_flipper(void) {
  pthread_t t;
  pthread_create(&t, NULL, flip_arg, NULL);
  while (!g_flipping) {
  }
}

/* Another thread rewrites argv while execve runs. */
static void a_rec_argv_race(void) {
  int n = atoi(arg(0));
  for (int i = 0; i < n; i++) {
    pid_t c = fork();
    if (c == 0) {
      start_flipper();
      char idx[16];
      snprintf(idx, sizeof idx, "%d", i);
      char* av[] = {(char*)"/bin/attack", (char*)"rec_note", idx, g_argbuf, NULL};
      execv("/bin/attack", av);
      _exit(3);
    }
    waitpid(c, NULL, 0);
  }
  blocked("%d execs with argv rewritten by another thread (the record decides)", n);
}

/* rec_exit IDX ARG: exits at once with a hash of the ARG it received (its
 * only report: no time to write anything). */
static int arg_hash(const char* s) {
  unsigned h = 0;
  for (; *s; s++) h = h * 31 + (unsigned char)*s;
  return (int)(h & 0xff);
}

static void a_rec_exit(void) {
  _exit(arg_hash(arg(1)));
}

/* Another thread rewrites argv while execve runs a program that exits at
 * once; the exit status says which argument it got. */
static void a_rec_argv_exit_race(void) {
  int n = atoi(arg(0));
  for (int i = 0; i < n; i++) {
    char idx[16];
    snprintf(idx, sizeof idx, "%d", i);
    pid_t c = fork();
    if (c == 0) {
      start_flipper();
      char* av[] = {(char*)"/bin/attack", (char*)"rec_exit", idx, g_argbuf, NULL};
      execv("/bin/attack", av);
      _exit(3);
    }
    int st = 0;
    waitpid(c, &st, 0);
    char line[64];
    snprintf(line, sizeof line, "%s %d\n", idx, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    append_line("/vol/rec.log", line);
  }
  blocked("%d execs of a program that exits at once, argv rewritten by another thread (the record decides)", n);
}

static void* swap_link(void* unused) {
  (void)unused;
  while (!g_stop) {
    symlink("/vol/b", "/vol/link.tmp");
    rename("/vol/link.tmp", "/vol/link");
    symlink("/bin/attack", "/vol/link.tmp");
    rename("/vol/link.tmp", "/vol/link");
  }
  return NULL;
}

/* A symlink swapped (and restored) while execve runs: /vol/link points at
 * /bin/attack or at /vol/b, a copy one byte longer. */
static void a_rec_symlink_swap(void) {
  int n = atoi(arg(0));
  if (copy_file("/bin/attack", "/vol/b", 1) < 0) error_out("copy: %s", en(errno));
  symlink("/bin/attack", "/vol/link");
  pthread_t t;
  pthread_create(&t, NULL, swap_link, NULL);
  for (int i = 0; i < n; i++) {
    char idx[16];
    snprintf(idx, sizeof idx, "%d", i);
    char* av[] = {(char*)"/vol/link", (char*)"rec_note", idx, (char*)"link", NULL};
    run_child("/vol/link", av);
  }
  g_stop = 1;
  pthread_join(t, NULL);
  symlink("/bin/attack", "/vol/link.tmp");
  rename("/vol/link.tmp", "/vol/link");
  blocked("%d execs through a symlink swapped meanwhile (the record decides)", n);
}

/* A working directory longer than PATH_MAX, and a relative exec in it of a
 * copy two bytes longer than /bin/attack. */
static void a_rec_long_cwd(void) {
  char name[201];
  memset(name, 'd', 200);
  name[200] = 0;
  if (chdir("/vol") < 0) error_out("chdir /vol: %s", en(errno));
  for (int i = 0; i < 25; i++) {
    if (mkdir(name, 0755) < 0 && errno != EEXIST) error_out("mkdir: %s", en(errno));
    if (chdir(name) < 0) error_out("chdir: %s", en(errno));
  }
  if (copy_file("/bin/attack", "prog", 2) < 0) error_out("copy: %s", en(errno));
  char* av[] = {(char*)"./prog", (char*)"rec_note", (char*)"0", (char*)"longcwd", NULL};
  int st = run_child("./prog", av);
  blocked("exec ./prog from a cwd of 5000+ bytes: %s", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "ran" : "failed");
}

/* Nested shebang: /vol/a -> /vol/b2 -> /bin/attack (ELF). */
static void a_rec_shebang(void) {
  append_line("/vol/b2", "#!/bin/attack\n");
  append_line("/vol/a", "#!/vol/b2\n");
  chmod("/vol/a", 0755);
  chmod("/vol/b2", 0755);
  char* av[] = {(char*)"/vol/a", NULL};
  int st = run_child("/vol/a", av);
  blocked("exec of a nested shebang chain: %s", WIFEXITED(st) && WEXITSTATUS(st) < 100 ? "ran" : "failed");
}

/* A memfd copy of /bin/attack three bytes longer, executed through
 * /proc/self/fd/N and through execveat(fd, "", AT_EMPTY_PATH). */
static void a_rec_memfd(void) {
  int m = (int)syscall(SYS_memfd_create, "payload", 0);
  if (m < 0) error_out("memfd_create: %s", en(errno));
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", m);
  if (copy_file("/bin/attack", p, 3) < 0) error_out("copy: %s", en(errno));
  char* av[] = {(char*)"payload", (char*)"rec_note", (char*)"0", (char*)"procfd", NULL};
  int st1 = run_child(p, av);
  pid_t c = fork();
  if (c == 0) {
    char* av2[] = {(char*)"payload", (char*)"rec_note", (char*)"1", (char*)"execveat", NULL};
    char* env[] = {NULL};
    syscall(SYS_execveat, m, "", av2, env, AT_EMPTY_PATH);
    _exit(100 + (errno & 0x3f));
  }
  int st2 = 0;
  waitpid(c, &st2, 0);
  blocked("memfd execs: /proc/self/fd %d, execveat %d", st1, st2);
}

/* Hash-cache poisoning: a shared writable mapping of a tmpfs file, every
 * page faulted, an exec (ETXTBSY while it is mapped), the content rewritten
 * through the mapping (no mtime change on tmpfs), unmapped, executed. */
static void a_rec_cache_poison(void) {
  const char* f = "/scratch/p";
  if (copy_file("/bin/attack", f, 0) < 0) error_out("copy to %s: %s", f, en(errno));
  int fd = open(f, O_RDWR | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) error_out("open: %s", en(errno));
  char* map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) error_out("mmap: %s", en(errno));
  close(fd);
  for (off_t o = 0; o < st.st_size; o += 4096) ((volatile char*)map)[o] = map[o]; /* a store the compiler keeps */
  sleep(3);
  char* av[] = {(char*)f, (char*)"rec_note", (char*)"0", (char*)"before", NULL};
  int st1 = run_child(f, av);
  /* the payload: one byte of the usage text changes (the program still runs) */
  const char* needle = "usage: attack NAME";
  char* hit = memmem(map, (size_t)st.st_size, needle, strlen(needle));
  if (!hit) error_out("usage text not found in the copy");
  hit[17] = 'F';
  munmap(map, (size_t)st.st_size);
  char* av2[] = {(char*)f, (char*)"rec_note", (char*)"1", (char*)"after", NULL};
  int st2 = run_child(f, av2);
  blocked("exec while mapped: %s; exec after rewriting through the mapping: %s",
          WIFEXITED(st1) && WEXITSTATUS(st1) >= 100 ? en(WEXITSTATUS(st1) - 100) : "ran",
          WIFEXITED(st2) && WEXITSTATUS(st2) == 0 ? "ran" : "failed");
}

/* A payload staged on a tmpfs (/scratch), executed, deleted: no walk ever
 * sees the file. The copy is four bytes longer than /bin/attack. */
static void a_rec_tmpfs_stage(void) {
  const char* f = "/scratch/stage/payload";
  mkdir("/scratch/stage", 0755);
  if (copy_file("/bin/attack", f, 4) < 0) error_out("copy to %s: %s", f, en(errno));
  char* av[] = {(char*)f, (char*)"rec_note", (char*)"0", (char*)"staged", NULL};
  int st = run_child(f, av);
  if (unlink(f) < 0) error_out("unlink: %s", en(errno));
  rmdir("/scratch/stage");
  blocked("staged payload ran (%s) and was removed", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "ok" : "failed");
}

/* Names that exist only during the run, on a volume (a host directory):
 * a directory, a file created O_RDONLY (never written, so no close-write),
 * a symlink, a hard link, a rename there and back; all removed again. No
 * walk sees them. */
static void a_rec_volume_names(void) {
  if (mkdir("/vol/stage", 0755) < 0) error_out("mkdir /vol/stage: %s", en(errno));
  int fd = open("/vol/stage/payload", O_CREAT | O_RDONLY | O_CLOEXEC, 0644);
  if (fd < 0) error_out("open O_CREAT|O_RDONLY: %s", en(errno));
  close(fd);
  if (symlink("payload", "/vol/stage/sym") < 0 || link("/vol/stage/payload", "/vol/stage/hard") < 0 ||
      rename("/vol/stage/payload", "/vol/stage/moved") < 0 || rename("/vol/stage/moved", "/vol/stage/payload") < 0)
    error_out("symlink/link/rename: %s", en(errno));
  if (unlink("/vol/stage/sym") < 0 || unlink("/vol/stage/hard") < 0 || unlink("/vol/stage/payload") < 0 ||
      rmdir("/vol/stage") < 0)
    error_out("remove: %s", en(errno));
  blocked("names created, moved and removed on /vol");
}

/* The same, as a burst the recorder cannot keep up with: 500 directories,
 * each with a file inside, created and removed as fast as the kernel
 * allows, so events of one name are merged in the queue and a directory is
 * gone before its first event is read. */
static void a_rec_volume_names_burst(void) {
  char d[64], f[80];
  for (int i = 0; i < 500; i++) {
    snprintf(d, sizeof d, "/vol/b%d", i);
    snprintf(f, sizeof f, "%s/p", d);
    if (mkdir(d, 0755) < 0) error_out("mkdir %s: %s", d, en(errno));
    int fd = open(f, O_CREAT | O_RDONLY | O_CLOEXEC, 0644);
    if (fd < 0) error_out("open %s: %s", f, en(errno));
    close(fd);
    if (unlink(f) < 0 || rmdir(d) < 0) error_out("remove %s: %s", d, en(errno));
  }
  blocked("500 directories with a file each created and removed on /vol");
}

/* An existing file of a writable volume rewritten through a shared
 * writable mapping after the hash cache saw it: every page faulted writable
 * first (the only moment mtime/ctime move), /vol/ready written, and once the
 * test has let something else walk the volume (/vol/go: a second container's
 * run caches the file's identity with its old content), the payload is
 * written through the mapping: no fault, so no timestamp moves. */
static void a_rec_mmap_volume(void) {
  const char* f = "/vol/data";
  int fd = open(f, O_RDWR | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < 16) error_out("open %s: %s", f, en(errno));
  char* map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) error_out("mmap: %s", en(errno));
  close(fd);
  for (off_t o = 0; o < st.st_size; o += 4096) ((volatile char*)map)[o] = map[o]; /* a store the compiler keeps */
  sleep(3); /* past the tree store's 2 s racy window */
  append_line("/vol/ready", "ready\n");
  for (int i = 0; i < 600 && access("/vol/go", F_OK) != 0; i++) usleep(100000);
  memcpy(map, "PWNED", 5);
  memcpy(map + st.st_size - 5, "PWNED", 5);
  munmap(map, (size_t)st.st_size);
  blocked("rewrote %lld bytes of %s through a mapping faulted before the cache saw it", (long long)st.st_size, f);
}

/* ---------------------------------------------------------------- dispatch */

static const struct {
  const char* name;
  void (*fn)(void);
  int fork_child;
} attacks[] = {
    {"hello", a_hello, 1},
    {"pause", a_pause, 0},
    {"whoami", a_whoami, 0},
    {"raw_socket_report", a_raw_socket_report, 0},
    {"rootfs_write", a_rootfs_write, 1},
    {"rootfs_overwrite_binary", a_rootfs_overwrite_binary, 1},
    {"remount_root_rw", a_remount_root_rw, 1},
    {"mount_tmpfs", a_mount_tmpfs, 1},
    {"mount_proc", a_mount_proc, 1},
    {"mount_bind", a_mount_bind, 1},
    {"mount_fsopen", a_mount_fsopen, 1},
    {"open_tree", a_open_tree, 1},
    {"unshare", a_unshare, 1},
    {"clone_newuser", a_clone_newuser, 1},
    {"clone3_newuser", a_clone3_newuser, 1},
    {"setns", a_setns, 1},
    {"cap_bit", a_cap_bit, 1},
    {"ptrace_sibling", a_ptrace_sibling, 1},
    {"process_vm_readv", a_process_vm_readv, 1},
    {"ptrace_traceme_setuid", a_ptrace_traceme_setuid, 1},
    {"finit_module", a_finit_module, 1},
    {"init_module", a_init_module, 1},
    {"delete_module", a_delete_module, 1},
    {"raw_socket", a_raw_socket, 1},
    {"packet_socket", a_packet_socket, 1},
    {"host_tcp", a_host_tcp, 1},
    {"metadata", a_metadata, 1},
    {"read_file", a_read_file, 1},
    {"list_dir", a_list_dir, 1},
    {"write_back", a_write_back, 1},
    {"open_write", a_open_write, 1},
    {"cgroup_mkdir", a_cgroup_mkdir, 1},
    {"cgroup_write", a_cgroup_write, 1},
    {"release_agent", a_release_agent, 1},
    {"mknod", a_mknod, 1},
    {"dev_open", a_dev_open, 1},
    {"keyctl", a_keyctl, 1},
    {"bpf_prog", a_bpf_prog, 1},
    {"bpf_map", a_bpf_map, 1},
    {"bpf_host_maps", a_bpf_host_maps, 1},
    {"perf_event_open", a_perf_event_open, 1},
    {"userfaultfd", a_userfaultfd, 1},
    {"io_uring", a_io_uring, 1},
    {"personality", a_personality, 1},
    {"modify_ldt", a_modify_ldt, 1},
    {"syslog", a_syslog, 1},
    {"sysctl_syscall", a_sysctl_syscall, 1},
    {"swapon", a_swapon, 1},
    {"acct", a_acct, 1},
    {"kexec_file_load", a_kexec_file_load, 1},
    {"ioperm", a_ioperm, 1},
    {"open_by_handle_at", a_open_by_handle_at, 1},
    {"i386", a_i386, 1},
    {"x32", a_x32, 1},
    {"setuid_exec", a_setuid_exec, 1},
    {"fcap_exec", a_fcap_exec, 1},
    {"chroot_escape", a_chroot_escape, 1},
    {"self_exe_write", a_self_exe_write, 1},
    {"runtime_exe", a_runtime_exe, 1},
    {"fork_bomb", a_fork_bomb, 1},
    {"memory_hog", a_memory_hog, 1},
    {"tmpfs_fill", a_tmpfs_fill, 1},
    {"find_paths", a_find_paths, 1},
    {"find_bytes", a_find_bytes, 1},
    {"kill_all", a_kill_all, 1},
    {"sethostname", a_sethostname, 1},
    {"tty_inject", a_tty_inject, 1},
    {"tty_linux", a_tty_linux, 1},
    {"kill_group", a_kill_group, 0},
    {"exec_nonregular", a_exec_nonregular, 1},
    {"exec_escape_argv", a_exec_escape_argv, 1},
    {"rec_note", a_rec_note, 0},
    {"rec_argv_race", a_rec_argv_race, 1},
    {"rec_exit", a_rec_exit, 0},
    {"rec_argv_exit_race", a_rec_argv_exit_race, 1},
    {"rec_symlink_swap", a_rec_symlink_swap, 1},
    {"rec_long_cwd", a_rec_long_cwd, 1},
    {"rec_shebang", a_rec_shebang, 1},
    {"rec_memfd", a_rec_memfd, 1},
    {"rec_cache_poison", a_rec_cache_poison, 1},
    {"rec_tmpfs_stage", a_rec_tmpfs_stage, 1},
    {"rec_mmap_volume", a_rec_mmap_volume, 1},
    {"rec_volume_names", a_rec_volume_names, 1},
    {"rec_volume_names_burst", a_rec_volume_names_burst, 1},
};

int main(int argc, char** argv) {
  g_argc = argc;
  g_argv = argv;
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc < 2) error_out("usage: attack NAME [ARGS...]");
  for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
    if (strcmp(attacks[i].name, argv[1])) continue;
    /* Mount attacks (and the ABI variants that mount) act on the mount
     * namespace: never run them in the host's (ESCAPE_HOST_MNTNS, set by the
     * test, is the host's mount namespace inode). */
    const char* host_mnt = getenv("ESCAPE_HOST_MNTNS");
    int mounts =
        !strncmp(argv[1], "mount_", 6) || !strcmp(argv[1], "remount_root_rw") ||
        ((!strcmp(argv[1], "i386") || !strcmp(argv[1], "x32")) && argc > 2 && !strcmp(argv[2], "mount"));
    if (mounts) {
      if (!host_mnt) error_out("ESCAPE_HOST_MNTNS is not set; refusing to try mounts");
      if (in_host_ns("mnt", host_mnt)) escaped("shares the host's mount namespace (no mount attempted)");
    }
    if (!attacks[i].fork_child) {
      attacks[i].fn();
      return 0;
    }
    /* Run the attack in a child so that a seccomp kill is a verdict. The
     * child reports through a pipe: the parent prints exactly one line. */
    int p[2];
    if (pipe(p) < 0) error_out("pipe: %s", en(errno));
    pid_t c = fork();
    if (c < 0) error_out("fork: %s", en(errno));
    if (c == 0) {
      close(p[0]);
      dup2(p[1], 1);
      close(p[1]);
      attacks[i].fn();
      _exit(2);
    }
    close(p[1]);
    char line[1100];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof line - 1 && (n = read(p[0], line + len, sizeof line - 1 - len)) > 0) len += (size_t)n;
    line[len] = 0;
    int st;
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) {
    }
    if (len) {
      fputs(line, stdout);
      if (line[len - 1] != '\n') fputc('\n', stdout);
      return !strncmp(line, "ESCAPED", 7) ? 1 : !strncmp(line, "BLOCKED", 7) ? 0 : 2;
    }
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS) blocked("killed by SIGSYS (seccomp) during %s", argv[1]);
    if (WIFSIGNALED(st)) error_out("attack %s died of signal %d without a verdict", argv[1], WTERMSIG(st));
    error_out("attack %s exited %d without a verdict", argv[1], WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  }
  error_out("unknown attack %s", argv[1]);
}
