package store_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"constellation/usage_go/internal/store"
	"constellation/usage_go/internal/testdb"
)

func TestAccountUsageTotalsJobsTilesDeviceTimeAndEnergy(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	id := testdb.Account(t, tx, "alice")
	testdb.JobWithRun(t, tx, id, 30, 100, 3)
	testdb.JobWithRun(t, tx, id, 90, 50, 2)

	u, err := store.New(tx).Account(context.Background(), id, store.All, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if u.Jobs != 2 || u.Tiles != 5 || u.EnergyJoules != 150 {
		t.Fatalf("got jobs=%d tiles=%d energy=%v, want 2, 5, 150", u.Jobs, u.Tiles, u.EnergyJoules)
	}
	if math.Abs(u.GPUSeconds-120) > 1 {
		t.Fatalf("gpu_seconds = %v, want about 120", u.GPUSeconds)
	}
}

func TestUnknownAccountIsNotFound(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	_, err := store.New(tx).Account(context.Background(), "00000000-0000-0000-0000-000000000000", store.Day, time.Now())
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestWindowLeavesOutOlderWork(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	id := testdb.Account(t, tx, "bob")
	testdb.JobWithRun(t, tx, id, 10, 0, 1)
	// Seen from two days later, a one-day window holds nothing.
	u, err := store.New(tx).Account(context.Background(), id, store.Day, time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if u.Jobs != 0 || u.Tiles != 0 || u.GPUSeconds != 0 {
		t.Fatalf("got %+v, want nothing in the window", u)
	}
}

func TestLeaderboardRanksByTheChosenMetric(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	busy := testdb.Account(t, tx, "busy")
	tiled := testdb.Account(t, tx, "tiled")
	testdb.JobWithRun(t, tx, busy, 300, 0, 1)
	testdb.JobWithRun(t, tx, tiled, 10, 0, 8)
	s := store.New(tx)

	byTime, err := s.Leaderboard(context.Background(), store.All, "gpu_seconds", 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	byTiles, err := s.Leaderboard(context.Background(), store.All, "tiles", 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if byTime[0].AccountName != "busy" || byTiles[0].AccountName != "tiled" {
		t.Fatalf("by time first %q, by tiles first %q", byTime[0].AccountName, byTiles[0].AccountName)
	}
}

func TestBadWindowAndMetricAreInvalid(t *testing.T) {
	t.Parallel()
	if _, err := store.ParseMetric("watts"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("metric: err = %v", err)
	}
	if _, err := store.Window("year").Since(time.Now()); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("window: err = %v", err)
	}
}

func TestARunCountsOnceWhenItFinishes(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	ctx := context.Background()
	id := testdb.Account(t, tx, "carol")
	var jobID, runID string
	if err := tx.QueryRow(ctx, `
		INSERT INTO jobs (name, submitted_by, account_id, aoi, zoom, state)
		VALUES ('t', 'test', $1, ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 1,0 0))', 4326), 10, 'running')
		RETURNING id::text`, id).Scan(&jobID); err != nil {
		t.Fatal(err)
	}
	// As Dagster runs go: the run starts, its metrics are recorded, then it is marked finished.
	if err := tx.QueryRow(ctx, `INSERT INTO runs (job_id, dagster_run_id, state) VALUES ($1, 'r-carol', 'running')
		RETURNING id::text`, jobID).Scan(&runID); err != nil {
		t.Fatal(err)
	}
	steps := []string{
		`UPDATE runs SET metrics = '{"gpu_seconds": 42, "energy_joules": 7}' WHERE id = $1`,
		`UPDATE runs SET state = 'succeeded', finished_at = now() WHERE id = $1`,
		`UPDATE runs SET metrics = metrics || '{"note": 1}' WHERE id = $1`, // after the end: not counted again
	}
	s := store.New(tx)
	for i, step := range steps {
		if _, err := tx.Exec(ctx, step, runID); err != nil {
			t.Fatal(err)
		}
		u, err := s.Account(ctx, id, store.Day, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		want := 0.0
		if i >= 1 {
			want = 42
		}
		if u.GPUSeconds != want || u.Jobs != 1 || (i >= 1 && u.EnergyJoules != 7) {
			t.Fatalf("after step %d: %+v, want gpu_seconds %v, jobs 1", i, u, want)
		}
	}
}
