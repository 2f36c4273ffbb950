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
	c := New(Options{Nice: 7, Workers: 3})
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
	if len(seen) != 1 || seen[7] != 12 {
		t.Errorf("workers ran at niceness %v, want 7 for all 12", seen)
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
			if n, _ := threadNice(); n == 7 {
				t.Errorf("a goroutine ran on a worker's niced thread")
			}
		}()
	}
	wg.Wait()
	// Nice 0 leaves the threads as they are.
	New(Options{Workers: 2}).each(4, func(int) {
		if n, _ := threadNice(); n != before {
			t.Errorf("with Nice 0 a worker ran at niceness %d", n)
		}
	})
}
