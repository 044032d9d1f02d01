-- busted's TAP output, made to survive a spec file that fails to load.
-- busted publishes such a file as an error with an empty trace; its TAP
-- handler then concatenates trace.currentline (nil) and the whole run dies
-- after one "not ok", without the load error's message, the remaining
-- files or the plan line.  Here the trace is completed first, so the file
-- is reported as one failing test with its message and the run goes on.
-- Used by tools/check.sh as `busted -o spec/support/tap.lua` on both runtimes.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.TAP")(options)

  -- priority 1 puts this ahead of the TAP handler's own error subscriber.
  busted.subscribe({ "error" }, function(element, _, _, trace)
    if type(trace) == "table" and element.trace == nil then
      trace.short_src = trace.short_src or tostring(element.name)
      trace.currentline = trace.currentline or 0
    end
    return nil, true
  end, { priority = 1 })

  return handler
end
