// `dmoe metrics list [--format text|json]`: the catalog of every Prometheus series dmoe
// exports. Dashboards, rules and autoscaler configs are checked against it (tests/deploy).
#include <iostream>
#include <string>

#include "clients/cli/commands.h"
#include "metrics/catalog.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {

void RegisterMetricsCommand(CLI::App& app, int* exit_code) {
  CLI::App* metrics = app.add_subcommand("metrics", "The Prometheus series dmoe exports");
  metrics->require_subcommand(1);
  CLI::App* list = metrics->add_subcommand("list", "Print every series: name, type, role, labels");
  auto format = std::make_shared<std::string>("text");
  list->add_option("--format", *format, "text (one series per line) or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  list->callback([format, exit_code] {
    if (*format == "json") {
      nlohmann::json out = nlohmann::json::array();
      for (const metrics::MetricSpec& spec : metrics::Catalog()) {
        std::vector<std::string> labels = spec.labels;
        labels.insert(labels.begin(), "model_version");
        out.push_back({{"name", spec.name},
                       {"type", metrics::TypeName(spec.type)},
                       {"role", spec.role},
                       {"help", spec.help},
                       {"labels", labels},
                       {"buckets", spec.buckets}});
      }
      std::cout << out.dump(2) << "\n";
    } else {
      for (const metrics::MetricSpec& spec : metrics::Catalog()) {
        std::string labels = "model_version";
        for (const std::string& l : spec.labels) labels += "," + l;
        std::cout << spec.name << " " << metrics::TypeName(spec.type) << " " << spec.role << " "
                  << labels << "\n";
      }
    }
    *exit_code = 0;
  });
}

}  // namespace dmoe::cli
