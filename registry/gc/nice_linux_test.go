package gc

import (
	"sync"
	"testing"
)

// The review workers run at Options.Nice, and the niceness ends with
// them: the goroutine that started them, and the threads other goroutines
// run on afterwards, keep theirs.
func TestWorkersYieldCPU(t *testing.T) {
	before, err := threadNice()
	if err != nil {
		t.Fatal(err)
	}
	want := before + 3
	if want > 19 {
		t.Fatalf("the test runs at niceness %d already: no lower priority is left to show", before)
	}
	c := New(Options{Nice: want, Workers: 3})
	var mu sync.Mutex
	seen := map[int]int{}
	c.each(12, func(int) {
		n, err := threadNice()
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		seen[n]++
		mu.Unlock()
	})
	if len(seen) != 1 || seen[want] != 12 {
		t.Errorf("workers ran at niceness %v, want %d for all 12", seen, want)
	}
	if after, _ := threadNice(); after != before {
		t.Errorf("the caller's thread went from niceness %d to %d", before, after)
	}
	// Many goroutines later, none runs on a thread the workers niced.
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n, _ := threadNice(); n == want {
				t.Errorf("a goroutine ran on a worker's niced thread")
			}
		}()
	}
	wg.Wait()
	// Nice 0, or one below the thread's own, leaves the threads as they are.
	for _, n := range []int{0, before} {
		New(Options{Nice: n, Workers: 2}).each(4, func(int) {
			if got, _ := threadNice(); got != before {
				t.Errorf("with Nice %d a worker ran at niceness %d, want %d", n, got, before)
			}
		})
	}
}
