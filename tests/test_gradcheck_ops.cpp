// Every differentiable op, gradchecked in float64 through the op table.
#define BOOST_TEST_MODULE gradcheck_ops
#include <boost/test/unit_test.hpp>

#include <set>

#include "loragrad/gradcheck.hpp"
#include "op_table.hpp"

using namespace loragrad;
using loragrad::testing::op_table;

BOOST_AUTO_TEST_CASE(every_op_has_a_table_entry) {
  std::set<Op> listed;
  for (const auto& e : op_table()) {
    BOOST_CHECK_MESSAGE(!e.samples.empty(), "op " << op_name(e.op) << " has an entry without samples");
    listed.insert(e.op);
  }
  for (Op op : all_ops)
    BOOST_CHECK_MESSAGE(listed.count(op), "op " << op_name(op) << " is in LORAGRAD_OPS but has no op-table entry");
}

BOOST_AUTO_TEST_CASE(every_sample_gradchecks_in_float64) {
  int checked = 0, manual = 0;
  for (const auto& e : op_table()) {
    for (const auto& s : e.samples) {
      // An op that rounds an input: that input is constant here, and the
      // manual check covers it (OpSample::check says why).
      if (s.check) {
        const std::string err = s.check(s.inputs);
        BOOST_CHECK_MESSAGE(err.empty(), op_name(e.op) << " [" << s.label << "]: manual check: " << err);
        ++manual;
      }
      bool any = false;
      for (const Tensor& t : s.inputs) any = any || (t.defined() && t.requires_grad());
      if (!any) {
        BOOST_CHECK_MESSAGE(s.check, op_name(e.op) << " [" << s.label << "]: no input to gradcheck and no manual check");
        continue;
      }
      GradcheckResult r = gradcheck(s.fn, s.inputs, s.gradcheck);
      BOOST_CHECK_MESSAGE(r.ok, op_name(e.op) << " [" << s.label << "]:\n" << r.report);
      ++checked;
    }
  }
  BOOST_TEST_MESSAGE("gradchecked " << checked << " samples; " << manual << " checked by hand too");
  BOOST_CHECK_GT(checked, 0);
}

BOOST_AUTO_TEST_CASE(every_sample_records_its_own_op) {
  // The output of a sample must come from the op it is filed under (or contain
  // it): catches an entry that tests a different op than it claims.
  for (const auto& e : op_table()) {
    for (const auto& s : e.samples) {
      Tensor y = s.fn(s.inputs);
      if (!y.grad_fn()) continue;  // e.g. dropout in eval mode, which is the identity
      bool found = false;
      std::vector<Node*> stack{y.grad_fn().get()};
      std::set<Node*> seen;
      while (!stack.empty() && !found) {
        Node* n = stack.back();
        stack.pop_back();
        if (!seen.insert(n).second) continue;
        found = n->op == e.op;
        for (auto& in : n->inputs)
          if (in.node) stack.push_back(in.node.get());
      }
      BOOST_CHECK_MESSAGE(found, op_name(e.op) << " [" << s.label << "]: graph does not contain the op");
    }
  }
}
