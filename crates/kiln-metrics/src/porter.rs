//! Exact port of NLTK's `PorterStemmer` (nltk 3.10.4) in its default `NLTK_EXTENSIONS` mode.
//!
//! This is the stemmer rouge-score uses (`PorterStemmer().stem(word)`); rouge-score itself only stems
//! tokens longer than 3 characters, which is the tokenizer's job ([`crate::rouge`]), not this module's:
//! [`stem`] stems any word, exactly like `PorterStemmer().stem(word)` does (words of 1–2 characters are
//! returned lowercased and unchanged, irregular forms such as `"dying"` come from NLTK's small table).
//!
//! The port is checked word for word against NLTK on ~30k words (`fixtures/rouge/porter.tsv`).
//!
//! Input is lowercased first (NLTK's `to_lowercase=True`). ASCII input takes a byte-level fast path; other
//! input is processed per `char` with Rust's `to_lowercase` (which follows the same Unicode full case
//! mapping as Python's `str.lower`).

/// NLTK's Porter stemmer (`nltk.stem.porter.PorterStemmer()`, `NLTK_EXTENSIONS` mode).
///
/// Stateless; `PorterStemmer.stem(w)` is the same as the free function [`stem`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PorterStemmer;

impl PorterStemmer {
    /// Same as NLTK's `PorterStemmer().stem(word)`.
    pub fn stem(&self, word: &str) -> String {
        stem(word)
    }
}

/// Stems `word` exactly like NLTK's `PorterStemmer().stem(word)` (default mode, lowercasing on).
pub fn stem(word: &str) -> String {
    if word.is_ascii() {
        let lower = word.as_bytes().to_ascii_lowercase();
        let out = stem_ascii_lower(&lower);
        // Only ASCII lowercase letters/bytes of the input, so this is valid UTF-8.
        String::from_utf8(out).expect("ascii")
    } else {
        let lower: Vec<char> = word.to_lowercase().chars().collect();
        let original_len = word.chars().count();
        stem_generic(lower, original_len).into_iter().collect()
    }
}

/// Stems an already-lowercased ASCII word (the rouge tokenizer's fast path).
pub(crate) fn stem_ascii_lower(word: &[u8]) -> Vec<u8> {
    stem_generic(word.to_vec(), word.len())
}

/// Irregular forms table (NLTK_EXTENSIONS): surface form -> stem.
const POOL: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// A letter of the word being stemmed: `u8` (ASCII fast path) or `char`.
trait Letter: Copy + Eq {
    fn from_ascii(b: u8) -> Self;
    fn is(self, b: u8) -> bool;
}

impl Letter for u8 {
    #[inline]
    fn from_ascii(b: u8) -> Self {
        b
    }
    #[inline]
    fn is(self, b: u8) -> bool {
        self == b
    }
}

impl Letter for char {
    #[inline]
    fn from_ascii(b: u8) -> Self {
        b as char
    }
    #[inline]
    fn is(self, b: u8) -> bool {
        self == b as char
    }
}

#[inline]
fn is_vowel<T: Letter>(c: T) -> bool {
    c.is(b'a') || c.is(b'e') || c.is(b'i') || c.is(b'o') || c.is(b'u')
}

/// `_is_consonant(word, i)`.
fn is_consonant<T: Letter>(w: &[T], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i].is(b'y') {
        // A 'y' is a consonant iff the letter before it is not one; resolve runs of 'y' iteratively.
        let mut negate = false;
        while i > 0 && w[i].is(b'y') {
            negate = !negate;
            i -= 1;
        }
        // consonant iff (the letter is not a vowel) XOR negate
        return is_vowel(w[i]) == negate;
    }
    true
}

/// `_measure(stem)`: number of "vc" in the consonant/vowel sequence.
fn measure<T: Letter>(w: &[T]) -> usize {
    let mut m = 0;
    let mut prev_cons = false;
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c.is(b'y') {
            i == 0 || !prev_cons
        } else {
            true
        };
        if i > 0 && !prev_cons && cons {
            m += 1;
        }
        prev_cons = cons;
    }
    m
}

/// `_contains_vowel(stem)`.
fn contains_vowel<T: Letter>(w: &[T]) -> bool {
    let mut prev_cons = false;
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c.is(b'y') {
            i == 0 || !prev_cons
        } else {
            true
        };
        if !cons {
            return true;
        }
        prev_cons = cons;
    }
    false
}

/// `_ends_double_consonant(word)` (condition *d).
fn ends_double_consonant<T: Letter>(w: &[T]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// `_ends_cvc(word)` (condition *o, with the NLTK two-letter extension).
fn ends_cvc<T: Letter>(w: &[T]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !(w[n - 1].is(b'w') || w[n - 1].is(b'x') || w[n - 1].is(b'y')))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

#[inline]
fn ends_with<T: Letter>(w: &[T], suffix: &[u8]) -> bool {
    w.len() >= suffix.len()
        && w[w.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(&c, &b)| c.is(b))
}

#[inline]
fn replace_suffix<T: Letter>(w: &mut Vec<T>, suffix_len: usize, replacement: &[u8]) {
    let n = w.len() - suffix_len;
    w.truncate(n);
    w.extend(replacement.iter().map(|&b| T::from_ascii(b)));
}

/// Condition of a suffix rule, evaluated on the stem (the word without the suffix).
#[derive(Clone, Copy)]
enum Cond {
    Always,
    /// m(stem) > 0
    M0,
    /// m(stem) > 1
    M1,
    /// m(stem) > 1 and stem ends in 's' or 't'
    M1ST,
    /// m(stem + first letter of the suffix) > 0 ("logi" rule: `word[:-3]`)
    LogiM0,
    /// m(word[:-1]) > 1 ("ll" rule of step 5b)
    LlM1,
}

fn check<T: Letter>(cond: Cond, word: &[T], stem_len: usize) -> bool {
    let stem = &word[..stem_len];
    match cond {
        Cond::Always => true,
        Cond::M0 => measure(stem) > 0,
        Cond::M1 => measure(stem) > 1,
        Cond::M1ST => {
            measure(stem) > 1 && (stem[stem_len - 1].is(b's') || stem[stem_len - 1].is(b't'))
        }
        Cond::LogiM0 => measure(&word[..word.len() - 3]) > 0,
        Cond::LlM1 => measure(&word[..word.len() - 1]) > 1,
    }
}

/// `_apply_rule_list`: the first rule whose suffix matches decides (applied or not, no further rules).
fn apply_rules<T: Letter>(w: &mut Vec<T>, rules: &[(&[u8], &[u8], Cond)]) {
    for &(suffix, replacement, cond) in rules {
        if ends_with(w, suffix) {
            let stem_len = w.len() - suffix.len();
            if check(cond, w, stem_len) {
                replace_suffix(w, suffix.len(), replacement);
            }
            return;
        }
    }
}

fn step1a<T: Letter>(w: &mut Vec<T>) {
    if ends_with(w, b"ies") && w.len() == 4 {
        replace_suffix(w, 3, b"ie");
        return;
    }
    apply_rules(
        w,
        &[
            (b"sses", b"ss", Cond::Always),
            (b"ies", b"i", Cond::Always),
            (b"ss", b"ss", Cond::Always),
            (b"s", b"", Cond::Always),
        ],
    );
}

fn step1b<T: Letter>(w: &mut Vec<T>) {
    if ends_with(w, b"ied") {
        if w.len() == 4 {
            replace_suffix(w, 3, b"ie");
        } else {
            replace_suffix(w, 3, b"i");
        }
        return;
    }
    if ends_with(w, b"eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            replace_suffix(w, 3, b"ee");
        }
        return;
    }
    let mut succeeded = false;
    for suffix in [&b"ed"[..], &b"ing"[..]] {
        if ends_with(w, suffix) && contains_vowel(&w[..w.len() - suffix.len()]) {
            w.truncate(w.len() - suffix.len());
            succeeded = true;
            break;
        }
    }
    if !succeeded {
        return;
    }
    // Rule list on the intermediate stem.
    for (suffix, replacement) in [(&b"at"[..], &b"ate"[..]), (b"bl", b"ble"), (b"iz", b"ize")] {
        if ends_with(w, suffix) {
            replace_suffix(w, suffix.len(), replacement);
            return;
        }
    }
    if ends_double_consonant(w) {
        let last = w[w.len() - 1];
        if !(last.is(b'l') || last.is(b's') || last.is(b'z')) {
            w.pop();
        }
        return;
    }
    if measure(w) == 1 && ends_cvc(w) {
        w.push(T::from_ascii(b'e'));
    }
}

fn step1c<T: Letter>(w: &mut Vec<T>) {
    if ends_with(w, b"y") {
        let stem_len = w.len() - 1;
        if stem_len > 1 && is_consonant(&w[..stem_len], stem_len - 1) {
            replace_suffix(w, 1, b"i");
        }
    }
}

fn step2<T: Letter>(w: &mut Vec<T>) {
    if ends_with(w, b"alli") && measure(&w[..w.len() - 4]) > 0 {
        replace_suffix(w, 4, b"al");
        step2(w);
        return;
    }
    apply_rules(
        w,
        &[
            (b"ational", b"ate", Cond::M0),
            (b"tional", b"tion", Cond::M0),
            (b"enci", b"ence", Cond::M0),
            (b"anci", b"ance", Cond::M0),
            (b"izer", b"ize", Cond::M0),
            (b"bli", b"ble", Cond::M0),
            (b"alli", b"al", Cond::M0),
            (b"entli", b"ent", Cond::M0),
            (b"eli", b"e", Cond::M0),
            (b"ousli", b"ous", Cond::M0),
            (b"ization", b"ize", Cond::M0),
            (b"ation", b"ate", Cond::M0),
            (b"ator", b"ate", Cond::M0),
            (b"alism", b"al", Cond::M0),
            (b"iveness", b"ive", Cond::M0),
            (b"fulness", b"ful", Cond::M0),
            (b"ousness", b"ous", Cond::M0),
            (b"aliti", b"al", Cond::M0),
            (b"iviti", b"ive", Cond::M0),
            (b"biliti", b"ble", Cond::M0),
            (b"fulli", b"ful", Cond::M0),
            (b"logi", b"log", Cond::LogiM0),
        ],
    );
}

fn step3<T: Letter>(w: &mut Vec<T>) {
    apply_rules(
        w,
        &[
            (b"icate", b"ic", Cond::M0),
            (b"ative", b"", Cond::M0),
            (b"alize", b"al", Cond::M0),
            (b"iciti", b"ic", Cond::M0),
            (b"ical", b"ic", Cond::M0),
            (b"ful", b"", Cond::M0),
            (b"ness", b"", Cond::M0),
        ],
    );
}

fn step4<T: Letter>(w: &mut Vec<T>) {
    apply_rules(
        w,
        &[
            (b"al", b"", Cond::M1),
            (b"ance", b"", Cond::M1),
            (b"ence", b"", Cond::M1),
            (b"er", b"", Cond::M1),
            (b"ic", b"", Cond::M1),
            (b"able", b"", Cond::M1),
            (b"ible", b"", Cond::M1),
            (b"ant", b"", Cond::M1),
            (b"ement", b"", Cond::M1),
            (b"ment", b"", Cond::M1),
            (b"ent", b"", Cond::M1),
            (b"ion", b"", Cond::M1ST),
            (b"ou", b"", Cond::M1),
            (b"ism", b"", Cond::M1),
            (b"ate", b"", Cond::M1),
            (b"iti", b"", Cond::M1),
            (b"ous", b"", Cond::M1),
            (b"ive", b"", Cond::M1),
            (b"ize", b"", Cond::M1),
        ],
    );
}

fn step5a<T: Letter>(w: &mut Vec<T>) {
    if ends_with(w, b"e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

fn step5b<T: Letter>(w: &mut Vec<T>) {
    apply_rules(w, &[(b"ll", b"l", Cond::LlM1)]);
}

/// `PorterStemmer.stem` on an already-lowercased word; `original_len` is `len(word)` before lowercasing.
fn stem_generic<T: Letter>(mut w: Vec<T>, original_len: usize) -> Vec<T> {
    for &(form, stem) in POOL {
        if w.len() == form.len() && ends_with(&w, form.as_bytes()) {
            return stem.bytes().map(T::from_ascii).collect();
        }
    }
    if original_len <= 2 {
        return w;
    }
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5a(&mut w);
    step5b(&mut w);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_examples() {
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalizations", "gener"),
            ("dying", "die"),
            ("running", "run"),
            ("Running", "run"),
            ("is", "is"),
            ("yyyy", "yyyi"),
        ];
        for (w, s) in cases {
            assert_eq!(stem(w), s, "{w}");
        }
    }

    #[test]
    fn non_ascii_words() {
        assert_eq!(stem("cafés"), "café");
        assert_eq!(stem("naïvely"), "naïv");
    }
}
