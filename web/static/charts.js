// Charts of the VM page: history from /api/vms/NAME/metrics, drawn with uPlot.
(function () {
  var el = document.getElementById("charts");
  if (!el) return;
  var vm = el.dataset.vm;
  var charts = [
    { title: "CPU use (%)", series: ["cpu_usage_percent"], max: 100 },
    { title: "Guest memory used (%)", series: ["guest_memory_used_percent"], max: 100 },
    { title: "Guest load average", series: ["guest_load1", "guest_load5", "guest_load15"] },
    { title: "vCPU wait for host CPU (%)", series: ["vcpu_delay_percent"] },
  ];
  var colors = ["#3f6ec2", "#c77800", "#2e8540", "#b3261e"];
  var plots = {};
  function draw() {
    var names = [];
    charts.forEach(function (c) { names = names.concat(c.series); });
    fetch("/api/vms/" + encodeURIComponent(vm) + "/metrics?since=3600&names=" + names.join(","), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        charts.forEach(function (c, i) {
          var base = data[c.series[0]] || [];
          var xs = base.map(function (p) { return p.t; });
          var cols = [xs].concat(c.series.map(function (s) {
            var byT = {};
            (data[s] || []).forEach(function (p) { byT[p.t] = p.v; });
            return xs.map(function (t) { return t in byT ? byT[t] : null; });
          }));
          var key = "c" + i;
          if (!plots[key]) {
            var box = document.createElement("div");
            box.className = "chart";
            box.innerHTML = "<h3></h3>";
            box.firstChild.textContent = c.title;
            el.appendChild(box);
            var opts = {
              width: 400, height: 160, legend: { show: c.series.length > 1 },
              scales: c.max ? { y: { range: [0, c.max] } } : {},
              series: [{}].concat(c.series.map(function (s, j) { return { label: s, stroke: colors[j % colors.length], width: 1.5 }; })),
            };
            plots[key] = new uPlot(opts, cols, box);
          } else {
            plots[key].setData(cols);
          }
        });
      })
      .catch(function () {});
  }
  draw();
  setInterval(draw, 5000);
})();
