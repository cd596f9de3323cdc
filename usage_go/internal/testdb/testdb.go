// Package testdb gives each test a transaction on the real Postgres started by `make test`,
// rolled back when the test ends.
package testdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"constellation/usage_go/internal/config"
)

var (
	once    sync.Once
	pool    *pgxpool.Pool
	poolErr error
)

// Tx begins a transaction that is rolled back at the end of the test.
func Tx(t *testing.T) pgx.Tx {
	t.Helper()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		t.Fatal("DATABASE_URL is not set: run the Go tests through `make test`, which starts Postgres")
	}
	once.Do(func() { pool, poolErr = pgxpool.New(context.Background(), config.NormalizeURL(url)) })
	if poolErr != nil {
		t.Fatalf("connect: %v", poolErr)
	}
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// Account inserts an account and returns its id.
func Account(t *testing.T, tx pgx.Tx, name string) string {
	t.Helper()
	var id string
	if err := tx.QueryRow(context.Background(),
		`INSERT INTO accounts (name) VALUES ($1) RETURNING id::text`, name).Scan(&id); err != nil {
		t.Fatalf("insert account: %v", err)
	}
	return id
}

// AccountWithRole inserts an account with this role ("member" or "admin") and returns its id.
func AccountWithRole(t *testing.T, tx pgx.Tx, name, role string) string {
	t.Helper()
	var id string
	if err := tx.QueryRow(context.Background(),
		`INSERT INTO accounts (name, role) VALUES ($1, $2) RETURNING id::text`, name, role).Scan(&id); err != nil {
		t.Fatalf("insert account: %v", err)
	}
	return id
}

// Key stores an API key for the account (as the API does: its SHA-256, hex) and returns the key.
func Key(t *testing.T, tx pgx.Tx, accountID string) string {
	t.Helper()
	key := "cst_test_" + accountID
	sum := sha256.Sum256([]byte(key))
	if _, err := tx.Exec(context.Background(),
		`INSERT INTO api_keys (account_id, key_hash, prefix) VALUES ($1, $2, $3)`,
		accountID, hex.EncodeToString(sum[:]), key[:8]); err != nil {
		t.Fatalf("insert key: %v", err)
	}
	return key
}

// JobWithRun inserts a job for the account and one finished run lasting `seconds`, with `tiles` results.
func JobWithRun(t *testing.T, tx pgx.Tx, accountID string, seconds float64, energyJoules float64, tiles int) {
	t.Helper()
	ctx := context.Background()
	var jobID string
	err := tx.QueryRow(ctx, `
		INSERT INTO jobs (name, submitted_by, account_id, aoi, zoom, state)
		VALUES ('t', 'test', $1, ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 1,0 0))', 4326), 10, 'succeeded')
		RETURNING id::text`, accountID).Scan(&jobID)
	if err != nil {
		t.Fatalf("insert job: %v", err)
	}
	var runID string
	err = tx.QueryRow(ctx, `
		INSERT INTO runs (job_id, dagster_run_id, state, started_at, finished_at, metrics)
		VALUES ($1, gen_random_uuid()::text, 'succeeded', now() - make_interval(secs => $2), now(),
		        jsonb_build_object('energy_joules', $3::float8))
		RETURNING id::text`, jobID, seconds, energyJoules).Scan(&runID)
	if err != nil {
		t.Fatalf("insert run: %v", err)
	}
	for i := 0; i < tiles; i++ {
		_, err = tx.Exec(ctx, `
			INSERT INTO tiles (job_id, z, x, y, footprint)
			VALUES ($1, 10, $2, 0, ST_MakeEnvelope(0, 0, 1, 1, 4326));
		`, jobID, i)
		if err == nil {
			_, err = tx.Exec(ctx, `
				INSERT INTO tile_results (job_id, z, x, y, run_id, class, confidence)
				VALUES ($1, 10, $2, 0, $3, 'water', 0.9)`, jobID, i, runID)
		}
		if err != nil {
			t.Fatalf("insert tile: %v", err)
		}
	}
}
