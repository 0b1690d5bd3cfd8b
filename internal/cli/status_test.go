package cli

import "testing"

func TestDescribeBudget(t *testing.T) {
	got, err := describeBudget([]byte(`{"ledger":{"day":"2026-11-27","dayUsed":251,"dayReserved":49,"month":"2026-11","monthUsed":251,
		"limits":{"PerRequest":0,"Daily":200000,"Monthly":0}},"remaining":{"daily":199700,"monthly":-1}}`))
	want := "today (2026-11-27 UTC) 251 tokens used, 199700 of 200000 left; 2026-11 251 used"
	if err != nil || got != want {
		t.Fatalf("describeBudget = %q, %v; want %q", got, err, want)
	}
	if _, err := describeBudget([]byte(`not json`)); err == nil {
		t.Fatal("garbage accepted")
	}
}
