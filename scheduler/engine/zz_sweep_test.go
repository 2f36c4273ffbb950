package engine

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"strconv"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/model"
)

func (s *simCluster) worst() (float64, string) {
	c := s.c
	fs := c.FairShares()
	m := allDims
	var largest float64
	for _, a := range c.apps {
		largest = math.Max(largest, share(a.m.Spec.Resources, c.total, &m))
	}
	w1, what := 0.0, ""
	for _, pm := range s.pools {
		p := c.pools[pm.Name]
		if p.sk.demand.IsZero() {
			continue
		}
		got := share(p.sk.usage, c.total, &m)
		want := share(fs[pm.Name], c.total, &m)
		if d := math.Abs(got-want) / largest; d > w1 {
			w1, what = d, pm.Name
		}
	}
	if os.Getenv("GAIA_SWEEP_V") != "" {
		for _, pm := range s.pools {
			p := c.pools[pm.Name]
			if p.sk.demand.IsZero() {
				continue
			}
			got := share(p.sk.usage, c.total, &m)
			want := share(fs[pm.Name], c.total, &m)
			if math.Abs(got-want)/largest > 0.6 {
				desc := ""
				for _, a := range sortedAppsOf(p) {
					if c.wanted(a) == 0 {
						continue
					}
					desc += fmt.Sprintf(" [%s %v live=%d missing=%d spread=%d ports=%d fair=%v]", a.sk.name, a.m.Spec.Resources[:2], a.cnt.live, a.missing, a.m.Spec.Spread, len(a.m.Spec.Ports), a.fair[:2])
				}
				fmt.Printf("   %s dev %+.2f (parent %s dev %+.2f) usage %v fair %v%s\n", pm.Name, (got-want)/largest, p.parent.sk.name, (share(p.parent.sk.usage, c.total, &m)-share(fs[p.parent.sk.name], c.total, &m))/largest, p.sk.usage, fs[pm.Name], desc)
			}
		}
	}
	return w1, what
}

// GAIA_SWEEP=from-to, GAIA_SCORING=0|1|all
func TestZZSweep(t *testing.T) {
	var from, to int64
	if _, err := fmt.Sscanf(os.Getenv("GAIA_SWEEP"), "%d-%d", &from, &to); err != nil {
		return
	}
	nodes, groups, leaves := 600, 8, 15
	if testing.Short() {
		nodes, groups, leaves = 200, 6, 8
	}
	scorings := []Scoring{Binpack, Spread}
	if sc, err := strconv.Atoi(os.Getenv("GAIA_SCORING")); err == nil {
		scorings = []Scoring{Scoring(sc)}
	}
	for seed := from; seed <= to; seed++ {
		for _, scoring := range scorings {
			t.Run(fmt.Sprint(seed, "/", scoring), func(t *testing.T) {
				s := buildSim(t, nodes, groups, leaves, seed, Config{Scoring: scoring})
				for _, a := range s.apps {
					s.c.UpsertApp(a)
				}
				s.converge(t, 400)
				w, what := s.worst()
				t.Logf("RESULT seed %d scoring %v phase1: %.2f %s rounds %d", seed, scoring, w, what, s.rounds)
				rng := rand.New(rand.NewSource(7))
				for j := 0; j < nodes/10; j++ {
					nd := s.c.nodeList[rng.Intn(len(s.c.nodeList))].m
					nd.State = model.NodeDown
					s.c.UpsertNode(nd)
				}
				for j := range s.apps {
					switch rng.Intn(6) {
					case 0:
						s.apps[j].Spec.Instances /= 4
					case 1:
						s.apps[j].State = model.AppStopped
					case 2:
						if s.apps[j].Spec.Spread == 0 && len(s.apps[j].Spec.Ports) == 0 {
							s.apps[j].Spec.Instances *= 2
						}
					}
					s.c.UpsertApp(s.apps[j])
				}
				r0 := s.rounds
				s.converge(t, 600)
				w, what = s.worst()
				t.Logf("RESULT seed %d scoring %v phase2: %.2f %s rounds %d", seed, scoring, w, what, s.rounds-r0)
			})
		}
	}
}
