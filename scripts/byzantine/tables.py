#!/usr/bin/env python3
"""docs/results.md, "Byzantine predictions": the three tables from the run directories
scripts/byzantine/run.sh wrote. Checks that every run finished its 12 rounds, that the
adversaries are the nodes it asked for, and that each summary's mean equals the mean of
its honest nodes' final accuracies.

Usage: scripts/byzantine/tables.py runs/byz 1,2,3,4,5
"""
import json, os, statistics as st, math, sys
R=sys.argv[1]
aggs=['mean','median','trimmed-mean','trust-weighted']
settings=[('none','0 (clean)',[]),('3','1 (node 3)',[3]),('36','2 (nodes 3, 6)',[3,6])]
seeds=[int(x) for x in sys.argv[2].split(',')]
T975={1:12.706,2:4.303,3:3.182,4:2.776,5:2.571}
def load(seed,tag,agg):
    s=json.load(open(f'{R}/s{seed}-l{tag}-{agg}/summary.json'))
    assert s['finished'] and s['rounds_closed']==12 and s['failed_rounds']==0
    acc={n['id']:n['final_accuracy'] for n in s['nodes']}
    assert all(n['adversary']==(n['id'] in {'none':[], '3':[3], '36':[3,6]}[tag]) for n in s['nodes'])
    return acc, s
def honest(acc, liars):
    v=[a for i,a in acc.items() if i not in liars]; return sum(v)/len(v)
n=len(seeds); t=T975[n-1]
def sd(v): return f"{100*st.mean(v):.2f} ± {100*st.stdev(v):.2f}"
def ci(v):
    h=t*st.stdev(v)/math.sqrt(n); m=st.mean(v)
    return f"{100*m:+.2f} [{100*(m-h):+.2f}, {100*(m+h):+.2f}]"
out=[]
out.append("| liars | " + " | ".join(f"`{a}`" for a in aggs) + " |")
out.append("|---|" + "---:|"*len(aggs))
for tag,name,liars in settings:
    row=[]
    for agg in aggs:
        v=[]
        for s in seeds:
            acc,summ=load(s,tag,agg); h=honest(acc,liars)
            assert abs(summ['mean_final_accuracy']-h)<1e-6
            v.append(h)
        row.append(sd(v)+" %")
    out.append(f"| {name} | "+" | ".join(row)+" |")
A="\n".join(out)
out=[]
out.append("| liars | " + " | ".join(f"`{a}`" for a in aggs) + " |")
out.append("|---|" + "---:|"*len(aggs))
for tag,name,liars in settings:
    row=[]
    for agg in aggs:
        g=[honest(load(s,tag,agg)[0],liars)-honest(load(s,'none','mean')[0],liars) for s in seeds]
        row.append(ci(g))
    out.append(f"| {name} | "+" | ".join(row)+" |")
B="\n".join(out)
out=[]
out.append("| seed | clean, all 8 | " + " | ".join(f"{l}: `{a}`" for l in ['1 liar','2 liars'] for a in aggs) + " |")
out.append("|---|---:|" + "---:|"*8)
for s in seeds:
    row=[f"{100*load(s,'none','mean')[1]['mean_final_accuracy']:.2f}"]
    for tag,name,liars in settings[1:]:
        for agg in aggs:
            row.append(f"{100*honest(load(s,tag,agg)[0],liars):.2f}")
    out.append(f"| {s} | "+" | ".join(row)+" |")
C="\n".join(out)
print(A); print(); print(B); print(); print(C)
