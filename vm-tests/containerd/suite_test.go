// containerd's snapshotter conformance suite (snapshots/testsuite) against
// `dmctl serve`, containerd's proxy-snapshotter protocol over a unix socket.
//
// Built offline from Debian's golang-github-containerd-containerd-dev into a
// static test binary (ensure_containerd_suite in ../lib.sh) and run in the
// guest, as root, by tests/dm_containerd.rs:
//
//	DMCTL_BIN=/path/to/dmctl $DMCTL_CONTAINERD_SUITE -test.v
//
// The suite calls the factory once per subtest, in parallel, each with a
// fresh root directory: every call gets its own pool (ROOT/state, pool "sN")
// and its own `dmctl serve`, stopped and destroyed by the cleanup.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// Pool names: unique per factory call in this process.
var poolCounter int64

const (
	socketWait = 30 * time.Second
	stopWait   = 10 * time.Second
)

// The snapshotter name in every request: "dmctl", as containerd sends it to
// its proxy plugin of that name.
// DMCTL_SUITE_SNAPSHOTTER overrides it to test this harness against another
// server, e.g. a containerd started by a fake DMCTL_BIN, whose own snapshots
// service dispatches on the name ("native").
func snapshotterName() string {
	if name := os.Getenv("DMCTL_SUITE_SNAPSHOTTER"); name != "" {
		return name
	}
	return "dmctl"
}

func dmctlBin(t *testing.T) string {
	bin := os.Getenv("DMCTL_BIN")
	if bin == "" {
		t.Fatal("DMCTL_BIN (the path of dmctl) is not set")
	}
	return bin
}

func TestSnapshotterSuite(t *testing.T) {
	bin := dmctlBin(t)
	testsuite.SnapshotterSuite(t, "dmctl", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return newBackend(ctx, bin, root)
	})
}

// TestUnpackerAdoptsLayers does, through a running containerd, what
// containerd's unpacker (pull) does for each layer of an image: Prepare an
// extraction snapshot labelled containerd.io/snapshot.ref=CHAINID on the
// previous layer. A snapshotter that already holds the layer answers
// AlreadyExists, and containerd links its committed snapshot under the
// ChainID, found with a List filter on that label and the parent. Run by
// tests/dm_containerd.rs with DMCTL_ADOPT_CONTAINERD (containerd's socket)
// and DMCTL_ADOPT_CHAINS (the ChainIDs bottom to top, comma-separated);
// skipped without them.
func TestUnpackerAdoptsLayers(t *testing.T) {
	addr, chains := os.Getenv("DMCTL_ADOPT_CONTAINERD"), os.Getenv("DMCTL_ADOPT_CHAINS")
	if addr == "" || chains == "" {
		t.Skip("DMCTL_ADOPT_CONTAINERD and DMCTL_ADOPT_CHAINS not set")
	}
	ctx := namespaces.WithNamespace(context.Background(), "default")
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", addr)
	}
	dctx, cancel := context.WithTimeout(ctx, socketWait)
	defer cancel()
	conn, err := grpc.DialContext(dctx, "localhost",
		grpc.WithInsecure(), grpc.WithBlock(), grpc.WithContextDialer(dialer))
	if err != nil {
		t.Fatalf("dial containerd %s: %v", addr, err)
	}
	defer conn.Close()
	// containerd's own snapshots service, which dispatches to the dmctl
	// proxy plugin through its metadata layer (namespaces, links).
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName())
	parent := ""
	for i, chain := range strings.Split(chains, ",") {
		key := fmt.Sprintf("extract-%d-%d %s", time.Now().UnixNano(), i, chain)
		_, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(map[string]string{
			"containerd.io/snapshot.ref": chain,
		}))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("layer %d (%s): Prepare: want AlreadyExists (adopted), got %v", i+1, chain, err)
		}
		info, err := sn.Stat(ctx, chain)
		if err != nil {
			t.Fatalf("layer %d (%s): not linked under its ChainID: %v", i+1, chain, err)
		}
		if info.Kind != snapshots.KindCommitted || info.Parent != parent {
			t.Fatalf("layer %d (%s): %+v, want committed on %q", i+1, chain, info, parent)
		}
		t.Logf("layer %d adopted: %s", i+1, chain)
		parent = chain
	}
}

// prefixWriter writes each line to w with a prefix (the pool name), so the
// interleaved logs of parallel servers stay readable.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
		p.buf = nil
	}
}

func newBackend(ctx context.Context, bin, root string) (snapshots.Snapshotter, func() error, error) {
	pool := fmt.Sprintf("s%d", atomic.AddInt64(&poolCounter, 1))
	state := filepath.Join(root, "state")
	sock := filepath.Join(root, "dmctl.sock")

	out, err := exec.Command(bin, "--root", state, "pool", "create", pool, "--data-size", "1G").CombinedOutput()
	if err != nil {
		return nil, nil, fmt.Errorf("dmctl pool create %s: %v: %s", pool, err, strings.TrimSpace(string(out)))
	}
	destroy := func() error {
		out, err := exec.Command(bin, "--root", state, "pool", "destroy", pool, "--force").CombinedOutput()
		if err != nil {
			return fmt.Errorf("dmctl pool destroy %s: %v: %s", pool, err, strings.TrimSpace(string(out)))
		}
		return nil
	}

	logw := &prefixWriter{w: os.Stderr, prefix: "[dmctl serve " + pool + "] "}
	// Small filesystems: the suite tests the contract, and the guest's root
	// (where the pools' sparse files live) is RAM; 20 subtests run at once.
	serve := exec.Command(bin, "--root", state, "serve", pool, "--address", sock, "--size", "256M")
	serve.Stdout = logw
	serve.Stderr = logw
	if err := serve.Start(); err != nil {
		derr := destroy()
		return nil, nil, joinErrs(fmt.Errorf("start dmctl serve %s: %w", pool, err), derr)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()

	stop := func() error {
		var err error
		_ = serve.Process.Signal(syscall.SIGTERM)
		select {
		case werr := <-exited:
			if werr != nil {
				err = fmt.Errorf("dmctl serve %s after SIGTERM: %v", pool, werr)
			}
		case <-time.After(stopWait):
			_ = serve.Process.Kill()
			<-exited
			err = fmt.Errorf("dmctl serve %s did not stop within %v of SIGTERM: killed", pool, stopWait)
		}
		logw.flush()
		return err
	}

	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}

	// Wait for the socket to accept a connection (or for serve to exit).
	deadline := time.Now().Add(socketWait)
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case werr := <-exited:
			exited <- werr // for stop()
			serr := stop()
			return nil, nil, joinErrs(fmt.Errorf("dmctl serve %s exited before its socket accepted (%v)", pool, werr), serr, destroy())
		default:
		}
		if time.Now().After(deadline) {
			return nil, nil, joinErrs(fmt.Errorf("dmctl serve %s: socket %s did not accept within %v: %v", pool, sock, socketWait, err), stop(), destroy())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// grpc-go 1.33: no credentials/insecure. The target must be a host name:
	// a socket path as the target makes an invalid :authority.
	dctx, cancel := context.WithTimeout(ctx, socketWait)
	defer cancel()
	conn, err := grpc.DialContext(dctx, "localhost",
		grpc.WithInsecure(), grpc.WithBlock(), grpc.WithContextDialer(dialer))
	if err != nil {
		return nil, nil, joinErrs(fmt.Errorf("grpc dial %s: %w", sock, err), stop(), destroy())
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName())

	cleanup := func() error {
		return joinErrs(sn.Close(), conn.Close(), stop(), destroy())
	}
	return sn, cleanup, nil
}

// joinErrs: the non-nil errors, one per line (Go 1.19 has no errors.Join).
func joinErrs(errs ...error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\n"))
}
