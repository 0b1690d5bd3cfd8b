package governance

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
)

// Amounts (commerce caps, approval thresholds and the amount arguments of
// calls) are compared as int64 millionths of a currency unit. Decimal strings
// are parsed exactly; binary floats from JSON are rounded to the nearest
// millionth, which is finer than any currency's minor unit.

// maxAmount is the largest amount accepted, about 9.2 trillion units. It
// keeps sums of a day's spending far from int64 overflow.
const maxAmount = math.MaxInt64 / 1000

// parseDecimal parses a non-negative decimal such as "12", "12.5" or
// "0.000001" into millionths.
func parseDecimal(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty amount")
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" || (hasDot && frac == "") {
		return 0, fmt.Errorf("amount %q: want digits with an optional fraction, like 12.50", s)
	}
	if len(frac) > decimalScaleExp {
		return 0, fmt.Errorf("amount %q has more than %d decimal places", s, decimalScaleExp)
	}
	if len(whole)+len(frac) > maxDecimalDigits {
		return 0, fmt.Errorf("amount %q has more than %d digits", s, maxDecimalDigits)
	}
	var v int64
	for _, part := range []string{whole, frac} {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if c < '0' || c > '9' {
				return 0, fmt.Errorf("amount %q: %q is not a digit", s, c)
			}
			v = v*10 + int64(c-'0')
		}
	}
	for range decimalScaleExp - len(frac) {
		v *= 10
	}
	if v > maxAmount || v < 0 {
		return 0, fmt.Errorf("amount %q is too large", s)
	}
	return v, nil
}

// formatAmount renders millionths as a decimal without trailing zeros.
func formatAmount(v int64) string {
	s := fmt.Sprintf("%d.%06d", v/decimalScale, v%decimalScale)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// Reasons for amount arguments that cannot be judged. A call whose amount
// cannot be read is denied rather than waved through.
const (
	reasonAmountType     = "commerce: the amount argument is not a number or decimal string"
	reasonAmountNegative = "commerce: the amount argument is negative or not finite"
	reasonAmountRange    = "commerce: the amount argument is out of range"
	reasonAmountSyntax   = "commerce: the amount argument is not a valid decimal"
	reasonCurrency       = "commerce: the call's currency differs from the policy's"
)

// amountOf reads an amount argument. ok is false with a reason when the value
// cannot be used.
func amountOf(v any) (amount int64, reason string) {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
			return 0, reasonAmountNegative
		}
		if x*decimalScale > float64(maxAmount) {
			return 0, reasonAmountRange
		}
		return int64(math.Round(x * decimalScale)), ""
	case float32:
		return amountOf(float64(x))
	case int:
		return intAmount(int64(x))
	case int32:
		return intAmount(int64(x))
	case int64:
		return intAmount(x)
	case uint32:
		return intAmount(int64(x))
	case uint64:
		if x > math.MaxInt64 {
			return 0, reasonAmountRange
		}
		return intAmount(int64(x))
	case string:
		a, err := parseDecimal(x)
		if err != nil {
			return 0, reasonAmountSyntax
		}
		return a, ""
	case json.Number:
		return amountOf(string(x))
	}
	return 0, reasonAmountType
}

func intAmount(x int64) (int64, string) {
	if x < 0 {
		return 0, reasonAmountNegative
	}
	if x > maxAmount/decimalScale {
		return 0, reasonAmountRange
	}
	return x * decimalScale, ""
}
