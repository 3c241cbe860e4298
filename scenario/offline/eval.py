# Usage: python3 eval.py CASES_DIR path/to/aggregator [-v]
"""Runs `aggregator rca` on every case (with/without graph, with/without --from) and a
BARO-style baseline (max robust z of post vs pre inject, per metric), prints AC@1/AC@3."""
import os, sys, json, subprocess, statistics, glob, collections
agg = sys.argv[2]
cases = sorted(glob.glob(os.path.join(sys.argv[1], "case*")))
def baro(d, inj):
    import csv
    rows = list(csv.reader(open(os.path.join(d,"data.csv"))))
    hdr = rows[0]; data = rows[1:]
    best = {}
    for j, name in enumerate(hdr[1:], 1):
        pre = [float(r[j]) for r in data if float(r[0]) < inj]
        post = [float(r[j]) for r in data if float(r[0]) >= inj]
        pre.sort(); n=len(pre)
        q = lambda p: pre[min(n-1,int(p*(n-1)))]
        med, iqr = q(0.5), q(0.75)-q(0.25)
        if iqr == 0: iqr = 1e-9
        z = max(abs(x-med)/iqr for x in post)
        svc = name.split("_")[0]
        best[svc] = max(best.get(svc,0), z)
    return [s for s,_ in sorted(best.items(), key=lambda kv: -kv[1])]
res = collections.defaultdict(lambda: collections.Counter())
for d in cases:
    target, fault, inj = open(os.path.join(d,"truth.txt")).read().split()
    inj = int(inj)
    variants = {"baro(inject)": baro(d, inj)}
    for name, extra in [("engine", []), ("engine+graph", ["--graph", os.path.join(d,"edges.csv")]),
                        ("engine --from", ["--from", str(inj)]),
                        ("engine+graph --from", ["--graph", os.path.join(d,"edges.csv"), "--from", str(inj)])]:
        out = os.path.join(d, "out.json")
        subprocess.run([agg, "rca", "--series", os.path.join(d,"data.csv"), *extra, "--out", out], check=True, capture_output=True)
        r = json.load(open(out))
        variants[name] = [c["target"] for c in r["ranking"]]
    for v, ranking in variants.items():
        k = ranking.index(target)+1 if target in ranking else 99
        res[v][(fault,"n")] += 1; res[v][("all","n")] += 1
        if k == 1: res[v][(fault,1)] += 1; res[v][("all",1)] += 1
        if k <= 3: res[v][(fault,3)] += 1; res[v][("all",3)] += 1
    if "-v" in sys.argv:
        print(os.path.basename(d), target, fault, {v: r[:3] for v,r in variants.items()})
faults = sorted({f for v in res for (f,_) in res[v] if f != "all"}) + ["all"]
print("%-22s" % "method" + "".join("%14s" % f for f in faults))
for v in res:
    print("%-22s" % v + "".join("%14s" % ("%d/%d %d/%d" % (res[v][(f,1)], res[v][(f,"n")], res[v][(f,3)], res[v][(f,"n")])) for f in faults))
