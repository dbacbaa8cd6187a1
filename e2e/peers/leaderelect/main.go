// Command leaderelect is the failover bench's second peer: the
// do-it-yourself pattern many teams run instead of an operator. A sidecar
// wins a Lease with client-go's leader election and labels its own pod
// role=active, so a Service that selects that label routes to it; it tells
// the application its role through the same role files hapair's agent
// writes (with no deadline: the pattern has none; the far one it writes is
// rewritten every 100 ms while it leads). Losing the lead, it
// labels its pod standby (when it still can) and exits, as client-go's
// examples do.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func main() {
	lease := flag.String("lease", "diy", "the Lease to win")
	runDir := flag.String("run-dir", "/var/run/hapair", "where the role files go")
	duration := flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
	renew := flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
	retry := flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	flag.Parse()
	ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
	if ns == "" || pod == "" {
		log.Fatal("POD_NAMESPACE and POD_NAME must be set")
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("in-cluster config: %v", err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()

	label := func(role string) error {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"role":%q}}}`, role)
		_, err := client.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}
	write := func(name, value string) {
		tmp := filepath.Join(*runDir, name+".tmp")
		if err := os.WriteFile(tmp, []byte(value+"\n"), 0o644); err != nil {
			log.Printf("write %s: %v", name, err)
			return
		}
		if err := os.Rename(tmp, filepath.Join(*runDir, name)); err != nil {
			log.Printf("rename %s: %v", name, err)
		}
	}
	write("role", "standby")
	if err := label("standby"); err != nil {
		log.Printf("label standby: %v", err)
	}

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *lease, Namespace: ns},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: pod},
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   *duration,
		RenewDeadline:   *renew,
		RetryPeriod:     *retry,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.Printf("%s leads", pod)
				write("epoch", strconv.FormatInt(time.Now().UnixMilli(), 10))
				write("deadline", "1000000000")
				write("role", "active")
				for label("active") != nil {
					time.Sleep(100 * time.Millisecond)
				}
				// The application trusts a deadline only once it is written
				// after the application started (hapair's contract): an
				// application restarted under a leader must not wait long.
				for {
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
						write("deadline", "1000000000")
					}
				}
			},
			OnStoppedLeading: func() {
				write("role", "standby")
				if err := label("standby"); err != nil {
					log.Printf("label standby: %v", err)
				}
				log.Fatalf("%s lost the lead", pod)
			},
			OnNewLeader: func(id string) { log.Printf("leader: %s", id) },
		},
	})
}
