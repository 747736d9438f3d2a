"""Notebook workloads for the storage benchmark: cells, and a check of what came back.

Sizes scale with ``scale`` (1.0 = the sizes the issue asks for: a pandas frame of a few
hundred MB, a >1 GB numpy array, ...); small scales are for developing the benchmark.
Each ``verify`` cell prints one JSON object {object name: works?} for the latest state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    cells: list[str]
    verify: str
    title: str


def pandas_pipeline(scale: float) -> Workload:
    n = max(10_000, int(3_000_000 * scale))
    cells = [
        "import numpy as np, pandas as pd\n"
        f"rng = np.random.default_rng(0); n = {n}\n"
        "df = pd.DataFrame({'id': np.arange(n), 'cat': rng.integers(0, 100, n).astype(str),"
        " 'x': rng.random(n), 'y': rng.random(n)})",
        "df['z'] = df.x * 2 + df.y",
        "agg = df.groupby('cat').agg({'x': 'mean', 'y': 'sum'})",
        "df = df[df.x > 0.1].reset_index(drop=True)",
        "top = df.nlargest(1000, 'z')",
        "df['label'] = np.where(df.z > 1.5, 'high', 'low')",
    ]
    verify = (
        "import json; print(json.dumps({'df': bool(len(df) > 0 and 'label' in df),"
        " 'agg': agg.shape == (100, 2), 'top': len(top) == 1000}))"
    )
    return Workload("pandas", cells, verify, f"pandas pipeline ({n:,} rows)")


def sklearn_model(scale: float) -> Workload:
    n = max(5_000, int(200_000 * scale))
    fit = max(2_000, int(40_000 * scale))
    cells = [
        "from sklearn.datasets import make_classification\n"
        f"X, y = make_classification(n_samples={n}, n_features=40, random_state=0)",
        "from sklearn.ensemble import RandomForestClassifier\n"
        "m = RandomForestClassifier(n_estimators=30, max_depth=12, n_jobs=1, random_state=0)"
        f".fit(X[:{fit}], y[:{fit}])",
        "acc = m.score(X[-5000:], y[-5000:])",
        "from sklearn.linear_model import LogisticRegression\n"
        "lr = LogisticRegression(max_iter=300).fit(X, y)",
        "pred = lr.predict(X[:1000])",
    ]
    verify = (
        "import json; print(json.dumps({'forest': m.predict(X[:5]).shape == (5,),"
        " 'score': bool(acc > 0.5), 'logreg': bool(lr.score(X[:1000], y[:1000]) > 0.5)}))"
    )
    return Workload("sklearn", cells, verify, f"scikit-learn models + data ({n:,}x40)")


def numpy_array(scale: float) -> Workload:
    n = max(1_000_000, int(140_000_000 * scale))  # 1.12 GB of float64 at scale 1
    cells = [
        f"import numpy as np; a = np.random.default_rng(0).random({n})",
        "a[: len(a) // 100] += 1.0  # 1% of the array",
        "b = 1",
        "a[len(a) // 2 : len(a) // 2 + len(a) // 100] *= 2  # another 1%",
    ]
    verify = (
        "import json; print(json.dumps({'array': bool(a.shape == "
        f"({n},) and a[0] >= 1.0 and a[len(a) // 2] >= 0), 'b': b == 1}}))"
    )
    return Workload("numpy", cells, verify, f"numpy array {n * 8 / 1e9:.2f} GB, 1% edits")


def small_cells(scale: float) -> Workload:
    del scale
    cells = [
        f"v{i} = [j * j for j in range(1000)]; s{i} = 'x' * 1000 + str({i}); d{i} = {{'k': {i}}}"
        for i in range(50)
    ]
    verify = (
        "import json; print(json.dumps({'all 50 cells': all(globals()[f'd{i}']['k'] == i"
        " and len(globals()[f'v{i}']) == 1000 for i in range(50))}))"
    )
    return Workload("small", cells, verify, "50 small cells")


def unpicklable(scale: float) -> Workload:
    del scale
    cells = [
        "def gen():\n    i = 0\n    while True:\n        yield i\n        i += 1\n"
        "g = gen(); first = next(g)",
        "with open('lines.txt', 'w') as w:\n"
        "    w.write(''.join(f'line {i}\\n' for i in range(100)))\n"
        "f = open('lines.txt'); l0 = f.readline()",
        "import threading, time\nev = threading.Event(); counter = [0]\n"
        "def work():\n    while not ev.is_set():\n"
        "        counter[0] += 1\n        time.sleep(0.01)\n"
        "th = threading.Thread(target=work, daemon=True); th.start()",
        "lk = threading.Lock()\nimport sqlite3\ncon = sqlite3.connect(':memory:')\n"
        "con.execute('create table t (x)'); con.execute('insert into t values (42)')",
        "n = next(g)",
    ]
    verify = (
        "import json, time\nres = {}\n"
        "try:\n    res['generator'] = next(g) == n + 1\n"
        "except Exception:\n    res['generator'] = False\n"
        "try:\n    res['open file'] = f.readline() == 'line 1\\n'\nexcept Exception:\n"
        "    res['open file'] = False\n"
        "try:\n    c0 = counter[0]; time.sleep(0.2)\n"
        "    res['thread'] = th.is_alive() and counter[0] > c0\nexcept Exception:\n"
        "    res['thread'] = False\n"
        "try:\n    res['lock'] = lk.acquire(timeout=1); lk.release()\nexcept Exception:\n"
        "    res['lock'] = False\n"
        "try:\n    res['sqlite'] = con.execute('select x from t').fetchone()[0] == 42\n"
        "except Exception:\n    res['sqlite'] = False\n"
        "print(json.dumps(res))"
    )
    return Workload("unpicklable", cells, verify, "generator, open file, thread, lock, sqlite")


ALL = {
    "pandas": pandas_pipeline,
    "sklearn": sklearn_model,
    "numpy": numpy_array,
    "small": small_cells,
    "unpicklable": unpicklable,
}
