// SD-1.5-shaped UNet forward (32x32 latent, batch 2, 77x768 context) replayed as CPU backend ops
// with dummy weights, timed per op and shape: where the CPU backend's time goes in the benchmark
// that matters (target < 3 s). Not a model: no skip of any real layer's cost is intended, but
// values are meaningless. Build and run:
//   g++ -O3 -march=native -std=c++17 -Inative native/common.cc native/cancel.cc native/cpu/*.cc \
//       test/native/cpu_unet_bench.cc -lpthread -o /tmp/unet && /tmp/unet
#include "backend.h"
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>
#include <string>
#include <random>
using namespace idforge;
static std::map<std::string,double> T, F; static double total=0, g_fl=0;
struct Buf { std::vector<float> d; Shape s; TensorView v(){ TensorView t; t.data=d.data(); t.shape=s; return t;} };
static Buf mk(Shape s){ Buf b; b.s=s; b.d.assign(numel(s), 0.01f); return b; }
static std::string g_tag;
static void op(const char* name0, OpCode c, OpAttrs a, std::vector<Buf*> in, std::vector<Buf*> out){
  std::string name = std::string(name0) + g_tag; g_tag.clear();
  std::vector<TensorView> vi, vo; for(auto* b:in) vi.push_back(b? b->v(): TensorView{}); for(auto*b:out) vo.push_back(b->v());
  auto t0=std::chrono::steady_clock::now(); cpuBackend()->run(c,a,vi,vo);
  double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count(); T[name]+=s; total+=s; F[name]+=g_fl; g_fl=0; }
static std::map<std::string, Buf> W;
static Buf* w(const std::string& k, Shape s){ auto it=W.find(k); if(it==W.end()) it=W.emplace(k, mk(s)).first; return &it->second; }
const int B=2;
Buf temb;
Buf conv(Buf& x, int O, int k, int s, int p){ int C=x.s[1],H=x.s[2],Wd=x.s[3]; Buf y=mk({B,O,(H+2*p-k)/s+1,(Wd+2*p-k)/s+1}); OpAttrs a; a.stride=s;a.pad=p; g_tag=" "+std::to_string(C)+">"+std::to_string(O)+"@"+std::to_string(H)+(s==2?"s2":""); g_fl=2.0*B*O*((H+2*p-k)/s+1)*((Wd+2*p-k)/s+1)*C*k*k;
  op(k==1?"conv1x1":"conv3x3",OpCode::CONV2D,a,{&x,w("cw"+std::to_string(O)+"_"+std::to_string(C)+"_"+std::to_string(k),{O,C,k,k}),w("b"+std::to_string(O),{O})},{&y}); return y; }
Buf gn(Buf& x, bool silu, int groups=32){ Buf y=mk(x.s); OpAttrs a; a.groups=groups; a.silu=silu; int C=x.s[1]; op("group_norm",OpCode::GROUP_NORM,a,{&x,w("g"+std::to_string(C),{C}),w("b"+std::to_string(C),{C})},{&y}); return y; }
Buf add(Buf& a, Buf& b){ Buf y=mk(a.s); op("add",OpCode::ADD,{},{&a,&b},{&y}); return y; }
Buf lin(Buf& x, int N, bool bias=true){ int K=x.s.back(); Shape s=x.s; s.back()=N; Buf y=mk(s); g_fl=2.0*numel(s)*K; g_tag=" M"+std::to_string(numel(s)/N)+" "+std::to_string(K)+">"+std::to_string(N); op("linear",OpCode::LINEAR,{},{&x,w("lw"+std::to_string(N)+"_"+std::to_string(K),{N,K}),bias? w("b"+std::to_string(N),{N}):nullptr},{&y}); return y; }
Buf res(Buf& x, int cout){ int cin=x.s[1]; Buf h=gn(x,true); h=conv(h,cout,3,1,1); Buf e=mk({B,1280}); op("silu",OpCode::SILU,{},{&temb},{&e}); Buf t=lin(e,cout); t.s={B,cout,1,1}; h=add(h,t); h=gn(h,true); h=conv(h,cout,3,1,1);
  if(cin!=cout){ Buf sc=conv(x,cout,1,1,0); return add(sc,h);} return add(x,h); }
Buf ctx;
Buf attn(Buf& q, Buf& k, Buf& v, const char* name){ Buf o=mk(q.s); OpAttrs a; a.heads=8; a.scale=1.0/std::sqrt(q.s[2]/8.0); op(name,OpCode::ATTENTION,a,{&q,&k,&v},{&o}); return o; }
Buf ln(Buf& x){ Buf y=mk(x.s); int C=x.s.back(); op("layer_norm",OpCode::LAYER_NORM,{},{&x,w("g"+std::to_string(C),{C}),w("b"+std::to_string(C),{C})},{&y}); return y; }
Buf xf(Buf& x){ int C=x.s[1],H=x.s[2],Wd=x.s[3]; Buf h=gn(x,false); h=conv(h,C,1,1,0); Buf t=mk({B,H*Wd,C}); OpAttrs pa; pa.perm={0,2,1}; Buf hr=h; hr.s={B,C,H*Wd}; op("permute",OpCode::PERMUTE,pa,{&hr},{&t});
  Buf n=ln(t); Buf q=lin(n,C,false),k=lin(n,C,false),v=lin(n,C,false); Buf o=attn(q,k,v,"self_attn"); o=lin(o,C); t=add(t,o);
  n=ln(t); q=lin(n,C,false); k=lin(ctx,C,false); v=lin(ctx,C,false); o=attn(q,k,v,"cross_attn"); o=lin(o,C); t=add(t,o);
  n=ln(t); Buf g=lin(n,8*C); Buf gg=mk({B,H*Wd,4*C}); op("geglu",OpCode::GEGLU,{},{&g},{&gg}); o=lin(gg,C); t=add(t,o);
  Buf back=mk({B,C,H*Wd}); op("permute",OpCode::PERMUTE,pa,{&t},{&back}); back.s={B,C,H,Wd}; h=conv(back,C,1,1,0); return add(h,x); }
Buf up(Buf& x){ Buf y=mk({B,x.s[1],2*x.s[2],2*x.s[3]}); op("upsample",OpCode::UPSAMPLE2X,{},{&x},{&y}); return y; }
Buf cat(Buf& a, Buf& b){ Buf y=mk({B,a.s[1]+b.s[1],a.s[2],a.s[3]}); OpAttrs at; at.axis=1; op("concat",OpCode::CONCAT,at,{&a,&b},{&y}); return y; }
int main(){
  for(int it=0; it<3; it++){ T.clear(); F.clear(); total=0;
  temb=mk({B,1280}); ctx=mk({B,77,768});
  Buf x=mk({B,4,32,32}); Buf h=conv(x,320,3,1,1); std::vector<Buf> skips{h};
  int ch[4]={320,640,1280,1280};
  for(int l=0;l<4;l++){ for(int r=0;r<2;r++){ h=res(h,ch[l]); if(l<3) h=xf(h); skips.push_back(h);} if(l<3){ h=conv(h,ch[l],3,2,1); skips.push_back(h);} }
  h=res(h,1280); h=xf(h); h=res(h,1280);
  int uch[4]={1280,1280,640,320};
  for(int l=0;l<4;l++){ for(int r=0;r<3;r++){ Buf s=skips.back(); skips.pop_back(); Buf c=cat(h,s); h=res(c,uch[l]); if(l>0) h=xf(h);} if(l<3){ h=up(h); h=conv(h,uch[l],3,1,1);} }
  h=gn(h,true); h=conv(h,4,3,1,1);
  if(it==2){ for(auto&[k,v]:T) printf("%-22s %8.1f ms %8.1f GFLOP %7.1f GFLOP/s\n",k.c_str(),v*1e3,F[k]/1e9,F[k]/v/1e9); }
  printf("total %.3f s\n", total); }
}
