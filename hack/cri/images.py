#!/usr/bin/env python3
"""Local stand-ins for every image that critest v1.26.1 uses, built with no network.

    hack/cri/images.py [--registry 127.0.0.1:PORT] [--cache DIR] [--hosts-dir DIR] [--list]

Builds one OCI image layout (DIR/oci) holding all the images, with deterministic layers
(sorted entries, mtime 0, root owner, gzip without a timestamp), and pushes each image with
skopeo to the registry under its original repository path without the host:
registry.k8s.io/e2e-test-images/busybox:1.29-2 becomes REGISTRY/e2e-test-images/busybox:1.29-2.
A second run with the same inputs reuses the layout in --cache (only the push is redone).

--hosts-dir DIR writes containerd-format DIR/<host>/hosts.toml files that send pulls for
registry.k8s.io, gcr.io, k8s.gcr.io and docker.io to the local registry.

What the stand-ins are made of:
  * busybox: Debian's dynamic `busybox` package (not busybox-static, whose shell runs applets
    itself even when /bin/<applet> is masked), with the glibc libraries it links, one HARD link
    per applet in /bin (a symlink would make masking /bin/ls mask /bin/busybox), and small
    `pgrep` and `ipcs` scripts (Debian's build has neither).
  * nginx / hostnet-nginx / httpd: a tiny static C web server (HTTP 200 for every request).
    As `nginx` it re-executes itself so that its command line reads
    "nginx: master process nginx -g daemon off;", writes /var/run/nginx.pid, and listens on
    the port of the `listen` line in /etc/nginx/conf.d/default.conf (80; 12003 for
    hostnet-nginx). As `httpd` it listens on 80 and logs "Command line: 'httpd -D FOREGROUND'".
  * nonewprivs: a static setuid-root program printing "Effective uid: N".
  * pause: a static C pause (also pushed as registry.k8s.io/pause:3.6 ... 3.9).
test-image-digest@sha256:9700f9a2... is an upstream digest that no local build can reproduce.

Needs: python3, gcc with static glibc (libc6-dev), skopeo (for the push), dpkg-deb and
apt-get (to fetch Debian's busybox .deb into the cache when --busybox-deb is not given).
"""
import argparse
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

E2E = "registry.k8s.io/e2e-test-images/"
CRI = "gcr.io/k8s-staging-cri-tools/"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRRORED_HOSTS = {
    "registry.k8s.io": "https://registry.k8s.io",
    "gcr.io": "https://gcr.io",
    "k8s.gcr.io": "https://k8s.gcr.io",
    "docker.io": "https://registry-1.docker.io",
}

# ---------------------------------------------------------------------------------------------
# C sources of the small programs (compiled with gcc -static).

PAUSE_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("pause (berth critest stand-in)\n");
        return 0;
    }
    if (getpid() != 1)
        fprintf(stderr, "Warning: pause should be the first process\n");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;)
        pause();
}
"""

NNP_C = r"""
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
"""

WEBSRV_C = r"""
/* One static web server playing nginx or httpd, chosen by the name it is run as. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MASTER "nginx: master process"

static void on_stop(int sig) { (void)sig; _exit(0); }

static const char *base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* The port of the first "listen N" in the nginx configuration file, else 80. */
static int nginx_port(void) {
    FILE *f = fopen("/etc/nginx/conf.d/default.conf", "r");
    char line[512];
    int port = 80;
    if (!f)
        return port;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "listen", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
            int n = atoi(p + 6);
            if (n > 0 && n < 65536) {
                port = n;
                break;
            }
        }
    }
    fclose(f);
    return port;
}

/* A dual-stack listener when IPv6 is there, else IPv4 only. */
static int listen_on(int port) {
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd >= 0) {
        struct sockaddr_in6 a6;
        memset(&a6, 0, sizeof a6);
        a6.sin6_family = AF_INET6;
        a6.sin6_addr = in6addr_any;
        a6.sin6_port = htons((unsigned short)port);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0 && listen(fd, 64) == 0)
            return fd;
        close(fd);
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    struct sockaddr_in a4;
    memset(&a4, 0, sizeof a4);
    a4.sin_family = AF_INET;
    a4.sin_addr.s_addr = htonl(INADDR_ANY);
    a4.sin_port = htons((unsigned short)port);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0 || listen(fd, 64) != 0) {
        fprintf(stderr, "cannot listen on port %d: %s\n", port, strerror(errno));
        exit(1);
    }
    return fd;
}

static void serve(int lfd, const char *server, const char *body) {
    char head[512];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 200 OK\r\nServer: %s\r\nContent-Type: text/html\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                        server, strlen(body));
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            continue;
        struct timeval tv = {3, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        char req[8192];
        size_t got = 0;
        while (got < sizeof req - 1) {
            ssize_t n = read(c, req + got, sizeof req - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
                break;
        }
        if (got > 0) {
            (void)!write(c, head, (size_t)hlen);
            if (strncmp(req, "HEAD ", 5) != 0)
                (void)!write(c, body, strlen(body));
        }
        close(c);
    }
}

static void stamp(char *buf, size_t n) {
    time_t t = time(NULL);
    strftime(buf, n, "%a %b %d %H:%M:%S %Y", gmtime(&t));
}

int main(int argc, char **argv) {
    const char *me = base(argv[0]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN);

    if (strncmp(me, "httpd", 5) == 0) {
        char cmd[1024] = "httpd", when[64];
        for (int i = 1; i < argc; i++) {
            strncat(cmd, " ", sizeof cmd - strlen(cmd) - 1);
            strncat(cmd, argv[i], sizeof cmd - strlen(cmd) - 1);
        }
        int fd = listen_on(80);
        stamp(when, sizeof when);
        fprintf(stderr, "[%s] [mpm_event:notice] [pid %d] AH00489: Apache/2.4.39 (Unix) "
                        "(berth critest stand-in) configured -- resuming normal operations\n",
                when, (int)getpid());
        fprintf(stderr, "[%s] [core:notice] [pid %d] AH00094: Command line: '%s'\n", when,
                (int)getpid(), cmd);
        fflush(stderr);
        serve(fd, "Apache/2.4.39 (Unix)",
              "<html><body><h1>It works!</h1></body></html>\n");
        return 0;
    }

    /* nginx: first re-execute under the master's command line (the name stays "nginx"). */
    if (strncmp(argv[0], MASTER, strlen(MASTER)) != 0) {
        char title[1024] = MASTER, self[4096];
        for (int i = 0; i < argc; i++) {
            strncat(title, " ", sizeof title - strlen(title) - 1);
            strncat(title, i == 0 ? me : argv[i], sizeof title - strlen(title) - 1);
        }
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = 0;
            char *nargv[] = {title, NULL};
            execv(self, nargv);
        }
        /* No /proc: carry on as we are. */
    }
    int fd = listen_on(nginx_port());
    FILE *pf = fopen("/var/run/nginx.pid", "w");
    if (pf) {
        fprintf(pf, "%d\n", (int)getpid());
        fclose(pf);
    } else {
        perror("/var/run/nginx.pid");
    }
    serve(fd, "nginx/1.14.2",
          "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n"
          "<body><h1>Welcome to nginx!</h1><p>berth critest stand-in</p></body></html>\n");
    return 0;
}
"""

# ---------------------------------------------------------------------------------------------
# Shell stand-ins for the applets Debian's busybox lacks.

PGREP_SH = r"""#!/bin/sh
# pgrep stand-in (Debian's busybox has none): prints the PID of every process whose name
# (/proc/PID/comm) contains PATTERN; exits 1 when there is none. Options are ignored.
while [ $# -gt 1 ]; do shift; done
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
pat=$1
found=1
for d in /proc/[0-9]*; do
    [ -r "$d/comm" ] || continue
    pid=${d#/proc/}
    [ "$pid" = "$$" ] && continue
    name=
    read -r name 2>/dev/null < "$d/comm" || continue
    case "$name" in
        *"$pat"*) echo "$pid"; found=0 ;;
    esac
done
exit $found
"""

IPCS_SH = r"""#!/bin/sh
# ipcs stand-in (Debian's busybox has none): lists the System V shared memory segments of
# this IPC namespace from /proc/sysvipc/shm, in util-linux's layout. Only -m (the default).
case "$1" in
    ""|-m|-a) ;;
    *) echo "ipcs: only -m is supported" >&2; exit 1 ;;
esac
echo
echo "------ Shared Memory Segments --------"
printf '%-10s %-10s %-10s %-10s %-10s %-10s %-12s\n' key shmid owner perms bytes nattch status
[ -r /proc/sysvipc/shm ] && awk 'NR > 1 {
    key = $1 + 0; if (key < 0) key += 4294967296
    printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", key, $2, $8, $3, $4, $7
}' /proc/sysvipc/shm
echo
"""

HTTPD_FOREGROUND_SH = """#!/bin/sh
# as the httpd image's entry point does
rm -f /usr/local/apache2/logs/httpd.pid
exec httpd -D FOREGROUND "$@"
"""

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
"""

NGINX_CONF = """server {
    listen       %d;
    server_name  localhost;
    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }
}
"""


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def log(msg):
    print("images.py: " + msg, file=sys.stderr, flush=True)


class Layer:
    """A layer's entries by path; written as a reproducible tar (directories first, then
    files and symlinks, then hard links, each group sorted by name)."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.entries[d] = ("dir", 0o755, 0, 0, None)

    def dir(self, path, mode=0o755, uid=0, gid=0):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("dir", mode, uid, gid, None)

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        path = path.strip("/")
        if isinstance(data, str):
            data = data.encode()
        self._parents(path)
        self.entries[path] = ("file", mode, uid, gid, data)

    def hardlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("link", 0o755, 0, 0, target.strip("/"))

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("sym", 0o777, 0, 0, target)

    def blob(self):
        """(gzip bytes, diff id) of the layer."""
        order = {"dir": 0, "file": 1, "sym": 1, "link": 2}
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries, key=lambda p: (order[self.entries[p][0]], p)):
                kind, mode, uid, gid, data = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 0
                ti.uname = ti.gname = ""
                if kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    t.addfile(ti)
                elif kind == "file":
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
                elif kind == "sym":
                    ti.type, ti.linkname = tarfile.SYMTYPE, data
                    t.addfile(ti)
                else:
                    ti.type, ti.linkname = tarfile.LNKTYPE, data
                    t.addfile(ti)
        tar = raw.getvalue()
        return gzip.compress(tar, compresslevel=6, mtime=0), sha256(tar)


# ---------------------------------------------------------------------------------------------
# Inputs: Debian's dynamic busybox and the compiled helpers.

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def find_busybox_deb(cache, given):
    if given:
        return given
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    have = sorted(f for f in os.listdir(debs) if f.startswith("busybox_") and f.endswith(".deb"))
    if not have:
        log("fetching Debian's busybox package (apt-get download busybox)")
        os.chmod(debs, 0o777)  # lets apt's _apt user write there (no warning)
        run(["apt-get", "download", "-q", "busybox"], cwd=debs, stdout=subprocess.DEVNULL)
        have = sorted(f for f in os.listdir(debs) if f.startswith("busybox_") and f.endswith(".deb"))
    if not have:
        sys.exit("images.py: no busybox .deb (give --busybox-deb FILE)")
    return os.path.join(debs, have[-1])


def busybox_inputs(cache, deb):
    """(busybox bytes, applet names, {path in image: library bytes}, digest of the .deb)."""
    root = os.path.join(cache, "busybox-deb")
    shutil.rmtree(root, ignore_errors=True)
    run(["dpkg-deb", "-x", deb, root])
    bb = os.path.join(root, "bin", "busybox")
    ldd = subprocess.run(["ldd", bb], capture_output=True, text=True)
    if ldd.returncode != 0 or "not a dynamic" in ldd.stdout + ldd.stderr:
        sys.exit("images.py: %s holds a static busybox; the dynamic one (package busybox) is needed" % deb)
    libs = {}
    for line in ldd.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if not m:
            continue
        host = m.group(m.lastindex)
        # The path the loader looks for: the interpreter's own name, else the host's
        # multiarch directory (without the /usr of the merged /usr).
        name = m.group(1) if m.group(1).startswith("/") else host
        name = re.sub(r"^/usr/lib/", "/lib/", name)
        with open(os.path.realpath(host), "rb") as f:
            libs[name] = f.read()
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with open(bb, "rb") as f:
        data = f.read()
    with open(deb, "rb") as f:
        debsum = hashlib.sha256(f.read()).hexdigest()
    return data, sorted(set(applets) - {"busybox"}), libs, debsum


def compile_helpers(cache):
    out = os.path.join(cache, "bin")
    os.makedirs(out, exist_ok=True)
    bins = {}
    for name, src in (("pause", PAUSE_C), ("websrv", WEBSRV_C), ("nnp", NNP_C)):
        c = os.path.join(out, name + ".c")
        exe = os.path.join(out, name)
        with open(c, "w") as f:
            f.write(src)
        run(["gcc", "-static", "-O2", "-s", "-Wall", "-o", exe, c])
        with open(exe, "rb") as f:
            bins[name] = f.read()
    return bins


# ---------------------------------------------------------------------------------------------
# The images.

def config(layers, cmd=None, entrypoint=None, user="", env=None, workdir="", ports=None,
           labels=None):
    c = {"Env": env or [PATH_ENV]}
    if cmd:
        c["Cmd"] = cmd
    if entrypoint:
        c["Entrypoint"] = entrypoint
    if user:
        c["User"] = user
    if workdir:
        c["WorkingDir"] = workdir
    if ports:
        c["ExposedPorts"] = {"%d/tcp" % p: {} for p in ports}
    c["Labels"] = dict({"org.opencontainers.image.description": "berth critest stand-in"},
                       **(labels or {}))
    return {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": c,
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/cri/images.py"}
                    for _ in layers],
    }


def busybox_layer(bb, applets, libs):
    l = Layer()
    for d in ("bin", "dev", "etc", "home", "lib", "lib64", "proc", "sys", "usr/bin",
              "usr/sbin", "var/spool/mail", "var/www", "var/run"):
        l.dir(d)
    l.dir("root", 0o700)
    l.dir("tmp", 0o1777)
    l.file("bin/busybox", bb, 0o755)
    for a in applets:
        l.hardlink("bin/" + a, "bin/busybox")
    l.file("bin/pgrep", PGREP_SH, 0o755)
    l.file("bin/ipcs", IPCS_SH, 0o755)
    for path, data in sorted(libs.items()):
        l.file(path, data, 0o755)
    l.file("etc/passwd", PASSWD)
    l.file("etc/group", GROUP)
    l.file("etc/shadow", "".join(line.split(":")[0] + ":*:10933:0:99999:7:::\n"
                                 for line in PASSWD.splitlines()), 0o640)
    return l.blob()


def marker_layer(name):
    """A one-file layer that makes an image differ from its siblings (as the upstream
    images' `ADD ${TEST} ${TEST}` does)."""
    l = Layer()
    l.file(name, name + "\n")
    return l.blob()


def nginx_layer(websrv, port):
    l = Layer()
    l.file("usr/sbin/nginx", websrv, 0o755)
    l.file("etc/nginx/conf.d/default.conf", NGINX_CONF % port)
    l.file("usr/share/nginx/html/index.html", "<h1>Welcome to nginx!</h1>\n")
    l.dir("var/log/nginx")
    l.dir("var/cache/nginx")
    l.dir("var/run")
    return l.blob()


def httpd_layer(websrv):
    l = Layer()
    l.file("usr/local/apache2/bin/httpd", websrv, 0o755)
    l.file("usr/local/apache2/bin/httpd-foreground", HTTPD_FOREGROUND_SH, 0o755)
    l.file("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n")
    l.dir("usr/local/apache2/logs")
    return l.blob()


def predefined_group_layer():
    l = Layer()
    l.file("etc/passwd", PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
    l.file("etc/group", GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    l.dir("home/default-user", 0o755, 1000, 1000)
    return l.blob()


def define_images(bbl, bins):
    """[(original names, layers, config)]: every name in a tuple is the same image."""
    imgs = []

    def add(names, layers, **cfg):
        imgs.append((names, layers, config(layers, **cfg)))

    add([E2E + "busybox:1.29-2"], [bbl], cmd=["sh"])
    add([E2E + "nginx:1.14-2"], [bbl, nginx_layer(bins["websrv"], 80)],
        cmd=["nginx", "-g", "daemon off;"], ports=[80])
    add([CRI + "hostnet-nginx-amd64:latest"], [bbl, nginx_layer(bins["websrv"], 12003)],
        cmd=["nginx", "-g", "daemon off;"], ports=[12003])
    add([E2E + "httpd:2.4.39-4"], [bbl, httpd_layer(bins["websrv"])],
        cmd=["httpd-foreground"], ports=[80], workdir="/usr/local/apache2",
        env=["PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HTTPD_PREFIX=/usr/local/apache2"])
    nnp = Layer()
    nnp.file("usr/local/bin/nnp", bins["nnp"], 0o4755)
    nnp.dir("tmp", 0o1777)
    add([E2E + "nonewprivs:1.3"], [nnp.blob()], entrypoint=["/usr/local/bin/nnp"])

    add([CRI + "test-image-latest:latest"], [bbl, marker_layer("test-image-latest")], cmd=["sh"])
    add([CRI + "test-image-tag:test"], [bbl, marker_layer("test-image-tag-test")], cmd=["sh"])
    add([CRI + "test-image-tag:all"], [bbl, marker_layer("test-image-tag-all")], cmd=["sh"])
    for i in (1, 2, 3):
        add([CRI + "test-image-%d:latest" % i], [bbl, marker_layer("test-image-%d" % i)], cmd=["sh"])
    add([CRI + "test-image-tags:%d" % i for i in (1, 2, 3)],
        [bbl, marker_layer("test-image-tags")], cmd=["sh"])
    for repo, user in (("test-image-user-uid", "1002"),
                       ("test-image-user-username", "www-data"),
                       ("test-image-user-uid-group", "1003:1004"),
                       ("test-image-user-username-group", "www-data:1004")):
        add([CRI + repo + ":latest"], [bbl], cmd=["sh"], user=user)
    add([CRI + "test-image-predefined-group:latest"], [bbl, predefined_group_layer()],
        cmd=["sh"], user="1000")

    pause = Layer()
    pause.file("pause", bins["pause"], 0o755)
    add(["registry.k8s.io/pause:3.%d" % v for v in (6, 7, 8, 9)], [pause.blob()],
        entrypoint=["/pause"], user="65535:65535")
    return imgs


def local_ref(name):
    """The image's ref name inside the OCI layout."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def push_path(name):
    """registry.k8s.io/e2e-test-images/busybox:1.29-2 -> e2e-test-images/busybox:1.29-2"""
    host, rest = name.split("/", 1)
    if host == "docker.io" and "/" not in rest.split(":")[0]:
        rest = "library/" + rest
    return rest


def write_layout(layout, imgs):
    shutil.rmtree(layout, ignore_errors=True)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)

    def put(b):
        p = os.path.join(blobs, sha256(b)[7:])
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(b)

    manifests = []
    for names, layers, cfg in imgs:
        cb = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        put(cb)
        for gz, _ in layers:
            put(gz)
        man = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(cb), "size": len(cb)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha256(gz), "size": len(gz)} for gz, _ in layers],
        }, sort_keys=True, separators=(",", ":")).encode()
        put(man)
        for n in names:
            manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": sha256(man), "size": len(man),
                              "annotations": {"org.opencontainers.image.ref.name": local_ref(n),
                                              "io.containerd.image.name": n}})
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f, indent=1, sort_keys=True)


def build(cache, deb_arg):
    """Builds (or reuses) DIR/oci; returns [(original name, manifest digest)]."""
    deb = find_busybox_deb(cache, deb_arg)
    with open(deb, "rb") as f:
        debsum = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.abspath(__file__), "rb") as f:
        me = f.read()
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(me + debsum.encode() + gcc.encode()).hexdigest()
    layout = os.path.join(cache, "oci")
    stampf = os.path.join(cache, "stamp")
    listf = os.path.join(cache, "images.json")
    if os.path.exists(stampf) and os.path.exists(listf):
        with open(stampf) as f:
            if f.read().strip() == key:
                log("reusing the image layout in " + layout)
                with open(listf) as g:
                    return json.load(g)
    log("building the images into " + layout)
    bb, applets, libs, _ = busybox_inputs(cache, deb)
    bins = compile_helpers(cache)
    bbl = busybox_layer(bb, applets, libs)
    imgs = define_images(bbl, bins)
    write_layout(layout, imgs)
    with open(os.path.join(layout, "index.json")) as f:
        idx = json.load(f)
    out = [[m["annotations"]["io.containerd.image.name"], m["digest"]] for m in idx["manifests"]]
    with open(listf, "w") as f:
        json.dump(out, f, indent=1)
    with open(stampf, "w") as f:
        f.write(key + "\n")
    return out


def push(layout, registry, images, jobs):
    """Pushes every name; the tags of one repository one after another (the registry answers
    500 to concurrent uploads of one blob into one repository), repositories in parallel."""
    by_repo = {}
    for name, _ in images:
        by_repo.setdefault(push_path(name).rsplit(":", 1)[0], []).append(name)

    def one(names):
        errors = []
        for name in names:
            dest = "docker://%s/%s" % (registry, push_path(name))
            for attempt in range(3):
                r = subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet",
                                    "--preserve-digests", "--dest-tls-verify=false",
                                    "oci:%s:%s" % (layout, local_ref(name)), dest],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    break
            else:
                errors.append("push of %s to %s failed:\n%s%s" % (name, dest, r.stdout, r.stderr))
        return errors

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for errors in ex.map(one, by_repo.values()):
            for e in errors:
                failed += 1
                log(e)
    if failed:
        sys.exit("images.py: %d pushes failed" % failed)
    log("pushed %d image names to %s" % (len(images), registry))


def write_hosts(dirname, registry):
    for host, server in MIRRORED_HOSTS.items():
        d = os.path.join(dirname, host)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write('server = "%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n'
                    '  skip_verify = true\n' % (server, registry))
    log("wrote hosts.toml for %s in %s" % (", ".join(MIRRORED_HOSTS), dirname))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", help="host:port of the registry to push to (plain HTTP)")
    ap.add_argument("--cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "berth-cri-images"),
        help="where the built layout is kept between runs")
    ap.add_argument("--hosts-dir", help="write containerd hosts.toml mirrors for the registry here")
    ap.add_argument("--busybox-deb", help="Debian's busybox (dynamic) .deb; fetched with apt-get otherwise")
    ap.add_argument("--jobs", type=int, default=4, help="parallel pushes")
    ap.add_argument("--list", action="store_true", help="print the image names and digests")
    a = ap.parse_args()
    if a.hosts_dir and not a.registry:
        ap.error("--hosts-dir needs --registry")
    cache = os.path.abspath(a.cache)
    os.makedirs(cache, exist_ok=True)
    images = build(cache, a.busybox_deb)
    if a.list:
        for name, digest in images:
            print(name, digest)
    if a.registry:
        push(os.path.join(cache, "oci"), a.registry, images, a.jobs)
    if a.hosts_dir:
        write_hosts(a.hosts_dir, a.registry)


if __name__ == "__main__":
    main()
