// Package store aggregates usage from the system of record.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is satisfied by *pgxpool.Pool and pgx.Tx, so tests can run inside a rolled-back transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	// ErrNotFound is returned when the account does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid wraps errors in what the caller asked for (a bad window or metric).
	ErrInvalid = errors.New("invalid request")
)

// Window is a look-back period.
type Window string

const (
	Day   Window = "day"
	Week  Window = "week"
	Month Window = "month"
	All   Window = "all"
)

// Since returns the first UTC day of the window ending today (zero time for All). Windows are whole
// UTC days, the grain of the usage_daily totals: day = today, week = the last 7 days, month = the
// last 30 days, today included.
func (w Window) Since(now time.Time) (time.Time, error) {
	today := now.UTC().Truncate(24 * time.Hour)
	switch w {
	case Day:
		return today, nil
	case Week:
		return today.AddDate(0, 0, -6), nil
	case Month:
		return today.AddDate(0, 0, -29), nil
	case All:
		return time.Time{}, nil
	}
	return time.Time{}, fmt.Errorf("%w: unknown window %q (want day, week, month or all)", ErrInvalid, string(w))
}

// Metric is what the leaderboard ranks by.
type Metric string

// metricOrdinals maps each metric to its column position in usageSQL's select list.
var metricOrdinals = map[Metric]int{
	"jobs":        3,
	"tiles":       4,
	"gpu_seconds": 5,
	"energy":      6,
}

// ParseMetric validates a metric name.
func ParseMetric(s string) (Metric, error) {
	if _, ok := metricOrdinals[Metric(s)]; !ok {
		return "", fmt.Errorf("%w: unknown metric %q (want gpu_seconds, tiles, jobs or energy)", ErrInvalid, s)
	}
	return Metric(s), nil
}

// Usage is one account's totals over a window.
type Usage struct {
	AccountID    string  `json:"account_id"`
	AccountName  string  `json:"account_name"`
	Window       Window  `json:"window"`
	Jobs         int64   `json:"jobs"`
	Tiles        int64   `json:"tiles"`
	GPUSeconds   float64 `json:"gpu_seconds"`
	EnergyJoules float64 `json:"energy_joules"`
}

// usageSQL sums each account's daily totals (usage_daily, kept by triggers) over the window's days:
// a few rows per account, however many jobs, runs and results there are.
const usageSQL = `
SELECT a.id::text, a.name, coalesce(u.jobs, 0)::bigint, coalesce(u.tiles, 0)::bigint,
       coalesce(u.gpu_seconds, 0)::float8, coalesce(u.energy_joules, 0)::float8
FROM accounts a
LEFT JOIN (
    SELECT account_id, sum(jobs) AS jobs, sum(tiles) AS tiles, sum(gpu_seconds) AS gpu_seconds,
           sum(energy_joules) AS energy_joules
    FROM usage_daily WHERE day >= $1::date GROUP BY account_id
) u ON u.account_id = a.id
`

// day is the window's first day as text, so the comparison never depends on the session time zone.
func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// Store reads usage.
type Store struct{ db Querier }

// New wraps a pool or transaction.
func New(db Querier) *Store { return &Store{db: db} }

// Account returns one account's usage; ErrNotFound if there is no such account.
func (s *Store) Account(ctx context.Context, accountID string, window Window, now time.Time) (Usage, error) {
	since, err := window.Since(now)
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Window: window}
	err = s.db.QueryRow(ctx, usageSQL+" WHERE a.id = $2::uuid", day(since), accountID).Scan(
		&u.AccountID, &u.AccountName, &u.Jobs, &u.Tiles, &u.GPUSeconds, &u.EnergyJoules)
	if errors.Is(err, pgx.ErrNoRows) {
		return Usage{}, ErrNotFound
	}
	return u, err
}

// Leaderboard returns the top accounts by metric.
func (s *Store) Leaderboard(ctx context.Context, window Window, metric Metric, limit int, now time.Time) ([]Usage, error) {
	since, err := window.Since(now)
	if err != nil {
		return nil, err
	}
	// The ordinal comes from a fixed map, never from the client.
	sql := usageSQL + fmt.Sprintf(" ORDER BY %d DESC, a.name LIMIT $2", metricOrdinals[metric])
	rows, err := s.db.Query(ctx, sql, day(since), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	board := []Usage{}
	for rows.Next() {
		u := Usage{Window: window}
		if err := rows.Scan(&u.AccountID, &u.AccountName, &u.Jobs, &u.Tiles, &u.GPUSeconds, &u.EnergyJoules); err != nil {
			return nil, err
		}
		board = append(board, u)
	}
	return board, rows.Err()
}

// Caller is the account an API key belongs to.
type Caller struct {
	AccountID string
	Admin     bool
}

// CallerByKeyHash finds the live key with this SHA-256 (hex) hash: not revoked, its account not
// disabled. ErrNotFound otherwise. The same keys and the same rule as the API's.
func (s *Store) CallerByKeyHash(ctx context.Context, keyHash string) (Caller, error) {
	var c Caller
	err := s.db.QueryRow(ctx, `
		SELECT a.id::text, a.role = 'admin' FROM api_keys k JOIN accounts a ON a.id = k.account_id
		WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND a.disabled_at IS NULL`, keyHash).Scan(&c.AccountID, &c.Admin)
	if errors.Is(err, pgx.ErrNoRows) {
		return Caller{}, ErrNotFound
	}
	return c, err
}

// Ranked is how far down the leaderboard a member's rank is looked for.
const Ranked = 100

// OwnRank is one account's usage and its position on the leaderboard (1 = the most; 0 when beyond
// the first Ranked accounts).
func (s *Store) OwnRank(ctx context.Context, accountID string, window Window, metric Metric, now time.Time) (Usage, int, error) {
	board, err := s.Leaderboard(ctx, window, metric, Ranked, now)
	if err != nil {
		return Usage{}, 0, err
	}
	for i, u := range board {
		if u.AccountID == accountID {
			return u, i + 1, nil
		}
	}
	u, err := s.Account(ctx, accountID, window, now)
	return u, 0, err
}
