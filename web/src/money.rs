//! Amounts in a currency's minor units, written as people read them: `$1,234,567.00`.
//!
//! The minor units are ISO 4217's (two for most currencies, none for the yen, three for the
//! Kuwaiti dinar); the symbol is the one an English-language page uses, or the code itself for
//! currencies without a well-known one (`SEK 12.50`). The campaign page's script formats live
//! totals with the same two facts, which the page carries in `data-` attributes.

/// How one currency is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyStyle {
    /// Written before the amount: `$`, `€`, or the code and a space.
    pub symbol: String,
    /// Digits after the decimal point.
    pub minor_units: u32,
}

/// ISO 4217 currencies with no minor unit.
const NO_MINOR_UNITS: [&str; 16] = [
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];
/// ISO 4217 currencies with three decimal places.
const THREE_MINOR_UNITS: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// Symbols an English page uses where they are unambiguous enough.
const SYMBOLS: [(&str, &str); 14] = [
    ("USD", "$"),
    ("EUR", "€"),
    ("GBP", "£"),
    ("JPY", "¥"),
    ("INR", "₹"),
    ("KRW", "₩"),
    ("CNY", "CN¥"),
    ("CAD", "CA$"),
    ("AUD", "A$"),
    ("NZD", "NZ$"),
    ("MXN", "MX$"),
    ("BRL", "R$"),
    ("ILS", "₪"),
    ("NGN", "₦"),
];

impl CurrencyStyle {
    /// The style of `code` (ISO 4217, upper case); an unknown code is written as itself with
    /// two decimals.
    pub fn of(code: &str) -> Self {
        let minor_units = if NO_MINOR_UNITS.contains(&code) {
            0
        } else if THREE_MINOR_UNITS.contains(&code) {
            3
        } else {
            2
        };
        let symbol = SYMBOLS
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(_, symbol)| *symbol);
        Self {
            symbol: symbol.map_or_else(|| format!("{code}\u{a0}"), str::to_owned),
            minor_units,
        }
    }

    /// `amount` minor units, e.g. `123456700` in USD as `$1,234,567.00`.
    pub fn format(&self, amount: u64) -> String {
        let scale = 10u64.pow(self.minor_units);
        let (whole, fraction) = (amount / scale, amount % scale);
        let mut text = format!("{}{}", self.symbol, grouped(whole));
        if self.minor_units > 0 {
            let width = self.minor_units as usize;
            text.push_str(&format!(".{fraction:0width$}"));
        }
        text
    }
}

/// `1234567` as `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_have_cents_and_thousands_separators() {
        assert_eq!(
            CurrencyStyle::of("USD").format(123_456_700),
            "$1,234,567.00"
        );
        assert_eq!(CurrencyStyle::of("USD").format(5), "$0.05");
        assert_eq!(CurrencyStyle::of("USD").format(0), "$0.00");
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!(CurrencyStyle::of("JPY").format(1_234_567), "¥1,234,567");
        assert_eq!(
            CurrencyStyle::of("KWD").format(1_234_567),
            "KWD\u{a0}1,234.567"
        );
        assert_eq!(CurrencyStyle::of("EUR").format(99), "€0.99");
    }

    #[test]
    fn a_currency_without_a_symbol_is_written_with_its_code() {
        assert_eq!(CurrencyStyle::of("SEK").format(1250), "SEK\u{a0}12.50");
    }

    #[test]
    fn grouping_puts_a_comma_every_three_digits() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }
}
